"""Recording audit events: one call per action, from a view, a login or account signal, or the automatic retry."""

from __future__ import annotations

import logging

from django.conf import settings

from audit.client import client_ip
from audit.middleware import current_request
from audit.models import Action, AuditEvent, Outcome
from batches import services
from batches.log_format import one_line
from batches.models import stored_username

logger = logging.getLogger("audit")
DETAIL_MAX_CHARS = 2000
BATCH_ID_MAX_CHARS = services.ID_LENGTH
TARGET_MAX_CHARS = 200
# Who made a change no request made: a management command (createsuperuser, changepassword), a task, a shell.
SYSTEM = "system"


def _without_secrets(text: str) -> str:
    # Upstream messages never carry the key, but the log is kept for years: make sure of it here as well.
    key = settings.OPENAI_API_KEY
    if key and key in text:
        text = text.replace(key, "[API key]")
    return text


def _cleaned(text: str, limit: int) -> str:
    """One line, at most `limit` characters: what a user or the API sent is kept as an escaped, bounded copy."""
    return one_line(text)[:limit]


def record(
    request,
    action: Action,
    outcome: Outcome,
    *,
    batch_id: str = "",
    target: str = "",
    detail: str = "",
    username: str | None = None,
    connection=None,
) -> AuditEvent:
    """Store one event, from the request's user (or `username` for logins that name someone else) and IP.

    `connection` (a Connection or its id) is the batch's; when a view does not pass it, it is the connection the
    request's batch was found in (batches.views.common.visible_batch_connection notes it on the request)."""
    if connection is None and batch_id:
        connection = getattr(request, "batchboard_connection", None)
    connection_id = getattr(connection, "pk", connection)
    user = getattr(request, "user", None)
    if user is not None and not user.is_authenticated:
        user = None
    if username is None:
        # A request made with an API token names the token too ("alice (token: ci-deploy)"): the api app says so.
        username = getattr(request, "audit_username", "") or (user.get_username() if user is not None else "")
    event = AuditEvent.objects.create(
        username=stored_username(one_line(username)),
        user=user,
        ip=client_ip(request) if request is not None else None,
        action=action,
        batch_id=_cleaned(batch_id, BATCH_ID_MAX_CHARS),
        connection_id=connection_id,
        target=_cleaned(_without_secrets(target), TARGET_MAX_CHARS),
        outcome=outcome,
        detail=_cleaned(_without_secrets(detail), DETAIL_MAX_CHARS),
    )
    level = logging.INFO if outcome in (Outcome.OK, Outcome.ALREADY) else logging.WARNING
    logger.log(
        level,
        "audit %s %s by %r from %s: %s %s",
        action,
        outcome,
        event.username,
        event.ip,
        event.batch_id,
        event.target,
    )
    return event


def record_here(action: Action, outcome: Outcome = Outcome.OK, *, target: str = "", detail: str = "") -> AuditEvent:
    """Store an event from code that is given no request (a model signal): by the request being answered, if there
    is one, else by the system."""
    request = current_request()
    return record(request, action, outcome, target=target, detail=detail, username=None if request else SYSTEM)
