"""Print the audit log since a moment: one line per event, or JSON lines with --json."""

import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.models import AuditEvent
from batches.log_format import json_line, one_line
from batches.models import DEFAULT_CONNECTION

DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}
FIELDS = ("at", "username", "ip", "action", "batch_id", "connection__slug", "target", "outcome", "detail")
NAMES = tuple(name.removesuffix("__slug") for name in FIELDS)  # "connection": the batch's connection's slug


def _since(text: str):
    match = DURATION.match(text or "")
    if not match or int(match[1]) <= 0:
        raise CommandError(f"--since must be a number above zero followed by d, h or m, like 7d or 12h (got {text!r}).")
    try:
        return timezone.now() - timedelta(**{UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise CommandError(f"--since is too large (got {text!r}).") from None


class Command(BaseCommand):
    help = (
        "Print who cancelled, created and downloaded what, every login, failed login and lockout, and every change to "
        "users, groups, permissions and passwords, oldest first."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", default="7d", help="How far back: 7d, 12h or 90m (default 7d).")
        parser.add_argument("--json", action="store_true", dest="as_json", help="One JSON object per line.")

    def handle(self, *args, since, as_json, **options):
        events = AuditEvent.objects.since(_since(since)).values_list(*FIELDS)
        for row in events.iterator(chunk_size=2000):
            event = dict(zip(NAMES, row, strict=True))
            event["at"] = event["at"].isoformat()
            self.stdout.write(_json_line(event) if as_json else _text_line(event))


def _json_line(event: dict) -> str:
    return json_line(event)


def _text_line(event: dict) -> str:
    # One line per event, whatever the fields hold (rows stored before they were cleaned included).
    event = {name: one_line(value) if isinstance(value, str) else value for name, value in event.items()}
    parts = [event["at"], event["username"] or "-", event["ip"] or "-", event["action"], event["outcome"]]
    parts += [value for value in (event["batch_id"], event["target"]) if value]
    if event["connection"] and event["connection"] != DEFAULT_CONNECTION:  # a single-key install's lines as before
        parts.insert(
            parts.index(event["batch_id"]) + 1 if event["batch_id"] else len(parts), f"in {event['connection']}"
        )
    line = " ".join(parts)
    return f"{line}: {event['detail']}" if event["detail"] else line
