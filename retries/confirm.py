"""A person's retry, the one path of the confirmation page and the JSON API: the options read from the request's
fields, the retry built and checked, sent only when nothing is wrong, and audited either way."""

from __future__ import annotations

from dataclasses import dataclass

from audit.log import record
from audit.models import Action
from audit.models import Outcome as AuditOutcome
from batches import actions, services
from retries import submit
from retries.models import MAX_AUTO_RETRIES
from retries.selection import RetrySelection


def options_of(data) -> tuple[dict, list[str]]:
    """The confirmation's options (completion window, automatic retries) and the problems with them."""
    problems = []
    window = data.get("completion_window", services.COMPLETION_WINDOWS[0])
    if window not in services.COMPLETION_WINDOWS:
        problems.append("Choose a completion window the API offers.")
        window = services.COMPLETION_WINDOWS[0]
    raw = (str(data.get("auto_retries") or "0")).strip()
    auto = int(raw) if raw.isdigit() else -1
    if not 0 <= auto <= MAX_AUTO_RETRIES:
        problems.append(f"Automatic retries are between 0 and {MAX_AUTO_RETRIES}.")
        auto = 0
    return {"completion_window": window, "auto_retries": auto or None}, problems


def _audit(request, outcome, parent_id: str, selection: RetrySelection, batch_id: str = "", detail: str = ""):
    target = f"retry of {parent_id}: {selection.label}"[:255]
    record(request, Action.CREATE, outcome, batch_id=batch_id, target=target, detail=detail)


def audit_refused(request, batch_id: str) -> None:
    record(request, Action.CREATE, AuditOutcome.REFUSED, batch_id=batch_id, detail="no permission to retry")


@dataclass
class Sent:
    """What sending a prepared retry came to: `refused` (why nothing was sent: a problem with the options, no line,
    an invalid built input), else the create's `outcome` (its batch, or its error)."""

    refused: str = ""
    outcome: actions.CreateOutcome | None = None


def send(request, prepared: submit.Prepared, selection: RetrySelection, problems: list[str]) -> Sent:
    """Send the retry when nothing is wrong with it, and audit what happened with the request's user (and token)."""
    parent_id = prepared.parent.batch_id
    if problems or not prepared.lines or not prepared.form.is_valid():
        detail = problems[0] if problems else "no lines" if not prepared.lines else "the built input is invalid"
        _audit(request, AuditOutcome.REFUSED, parent_id, selection, detail=detail)
        return Sent(refused=detail)
    outcome = submit.create(prepared, user=request.user.get_username())
    if outcome.batch is None:
        _audit(request, AuditOutcome.ERROR, parent_id, selection, detail=outcome.error)
    else:
        result = AuditOutcome.ALREADY if outcome.repeated else AuditOutcome.OK
        _audit(request, result, parent_id, selection, outcome.batch.batch_id)
    return Sent(outcome=outcome)
