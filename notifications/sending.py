"""Sending one message to one destination: through apprise (Slack, Teams, Discord, json://, mailto…), Django's email
backend, or a Standard Webhooks signed POST. The only module of the app that sends anything.

Errors come back as SendFailed with a reason that never holds the destination's URL beyond its scheme and host:
services keep their tokens in the path, the user, the password or the query. apprise's own log is kept off the
project's logs (settings.LOGGING) and read here, redacted.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise
import requests
from django.conf import settings
from django.core.mail import send_mail
from standardwebhooks.webhooks import Webhook

from batches import secrets
from notifications.messages import Message
from notifications.models import Destination, Kind

TIMEOUT = (5, 10)
USER_AGENT = "batchboard-notifications"
REASON_LENGTH = 500


class SendFailed(Exception):
    """The destination refused or could not be reached; the message is safe to show and log."""


def send(destination: Destination, message: Message) -> None:
    """Send one message (a test, a digest): a Sender for one."""
    with Sender(destination) as sender:
        sender.send(message)


class Sender:
    """Sends messages to one destination, one after another, as its send task's loop does: the URL is decrypted and,
    for apprise, parsed once (not once a message), and a signed webhook's POSTs share one kept-alive connection."""

    def __init__(self, destination: Destination):
        self.destination = destination
        self._target: str | None = None
        self._secret = ""
        self._notifier: apprise.Apprise | None = None
        self._session: requests.Session | None = None

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def send(self, message: Message) -> None:
        target = self._read_target()
        try:
            if self.destination.kind == Kind.EMAIL:
                _send_email(target, message)
            elif self.destination.kind == Kind.SIGNED_WEBHOOK:
                if self._session is None:
                    self._session = requests.Session()
                _send_signed(self._session, target, self._secret, message)
            else:
                self._send_apprise(target, message)
        except SendFailed as exc:
            raise SendFailed(redact(str(exc), target)) from None
        except Exception as exc:  # a library's surprise: named, redacted, never the URL
            raise SendFailed(redact(f"{type(exc).__name__}: {exc}", target)) from None

    def _read_target(self) -> str:
        if self._target is None:
            try:
                self._target = self.destination.target
                if self.destination.kind == Kind.SIGNED_WEBHOOK:
                    self._secret = self.destination.webhook_secret
            except secrets.Unreadable as exc:
                raise SendFailed(f"its URL cannot be read: {exc}") from None
        return self._target

    def _send_apprise(self, target: str, message: Message) -> None:
        if self._notifier is None:
            # One URL, sent in this thread: apprise's thread pool is for fanning one message to many URLs.
            notifier = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
            if not notifier.add(target):
                raise SendFailed(f"apprise does not understand this URL ({destination_scheme(target)}://…).")
            self._notifier = notifier
        with apprise.LogCapture(level=logging.WARNING) as captured:
            ok = self._notifier.notify(title=message.title, body=message.body)
        if not ok:
            said = captured.getvalue().strip().splitlines()
            reason = said[-1].split(" - ", 2)[-1] if said else "the service refused the notification"
            raise SendFailed(reason)


def _send_email(address: str, message: Message) -> None:
    try:
        send_mail(message.title, message.body, settings.DEFAULT_FROM_EMAIL, [address], fail_silently=False)
    except OSError as exc:
        raise SendFailed(f"the mail server refused or could not be reached: {exc}") from None


def _send_signed(session: requests.Session, url: str, secret: str, message: Message) -> None:
    """POST {"type", "timestamp", "data"} signed as Standard Webhooks (webhook-id, -timestamp, -signature)."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    moment = datetime.now(tz=UTC)
    body = json.dumps(
        {"type": f"batchboard.{message.event}", "timestamp": moment.isoformat(), "data": message.data},
        separators=(",", ":"),
    )
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, moment, body),
    }
    try:
        response = session.post(url, data=body.encode(), headers=headers, timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        raise SendFailed(f"could not reach it: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise SendFailed(f"it answered HTTP {response.status_code}")


def destination_scheme(target: str) -> str:
    return urlsplit(target).scheme or "?"


def redact(text: str, target: str) -> str:
    """`text` without any secret-looking part of `target` (user, password, path segments, query values, the whole
    URL), bounded."""
    parts = urlsplit(target)
    pieces = {target, parts.username or "", parts.password or "", parts.query, parts.path}
    pieces.update(unquote(segment) for segment in parts.path.split("/"))
    pieces.update(segment for segment in parts.path.split("/"))
    pieces.update(value for _key, value in parse_qsl(parts.query))
    if "@" in target and "://" not in target:  # a plain address
        pieces.add(target.partition("@")[0])
    for piece in sorted((piece for piece in pieces if len(piece) >= 4), key=len, reverse=True):
        text = text.replace(piece, "…")
    return text if len(text) <= REASON_LENGTH else text[: REASON_LENGTH - 1] + "…"
