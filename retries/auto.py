"""Automatic retries: when a batch created with "retry lines that fail with 429/5xx or expire, up to N times" is
final and its results are kept, a task retries those lines, once for every install that watches the organisation.

The reaction "auto_retry" of the parent, keyed by the attempt its retry will carry, makes it once per install (a
second worker or a re-enqueue is a no-op). Across installs nothing is shared but the API, so before sending, the task
waits for the history import to finish (an install never retries what it has not seen yet) and re-reads the top of
the list: a child of the same parent and attempt, made by any install, is taken as the retry, and nothing is sent.

Two installs that look at the same moment both find nothing and both send: each then reads the top of the list once
more, and the one whose retry is not the first made (by created_at, then id) cancels its own at once.

Cost model per parent: one query for the import's state, AUTO_TOP_PAGES list calls (recorded through the one
recording function), one query for an existing child; then building and creating the retry (see submit.py), and
one more list call to check that no other install sent it at the same moment.
"""

from __future__ import annotations

import logging
import uuid

from audit.log import record as audit_record
from audit.models import Action, Outcome
from batches import actions, reactions, services
from batches.lineage_keys import LineageState
from batches.models import Batch, SyncState, record_batches
from results.models import ArchiveState, ResultArchive, ResultFilter
from retries import submit
from retries.models import AUTO_RETRY_KEY, MAX_AUTO_RETRIES, AutoRetry, AutoRetryState
from retries.selection import RetrySelection

logger = logging.getLogger("batches.retries")

STEP = "auto_retry"
AUTO_SELECTION = RetrySelection("transient", ResultFilter())
AUTO_USER = "batchboard (automatic retry)"
TOKEN_NAMESPACE = uuid.UUID("5b0c1f0e-2a53-4f4e-9a55-3f0f2d7a1c11")
# The newest batches read before sending: another install's retry of a batch that just finished is among them.
AUTO_TOP_PAGES = 2
WAIT_SECONDS = 60.0


def retries_left(metadata: dict) -> int:
    """The N of the batch's metadata, within 0..MAX_AUTO_RETRIES; 0 for anything else."""
    raw = str(metadata.get(AUTO_RETRY_KEY, "")).strip()
    return min(int(raw), MAX_AUTO_RETRIES) if raw.isascii() and raw.isdigit() else 0


def retry(reaction) -> None:
    """The body of the "auto_retry" reaction of a parent batch (batches.reactions.run calls it)."""
    parent = reaction.batch
    archive = ResultArchive.objects.filter(batch=parent, state=ArchiveState.READY).first()
    left = retries_left(parent.metadata)
    if left <= 0 or archive is None:
        _note(parent, AutoRetryState.NOTHING)
        return
    if SyncState.objects.named(parent.connection.list_state).import_done_at is None:
        raise reactions.Later(WAIT_SECONDS, "waiting for the history import to finish")
    if parent.retry_of and parent.lineage_state == LineageState.UNVERIFIED:
        # Its retry names its job: wait until it is known whether that is the job it claims or itself.
        raise reactions.Later(WAIT_SECONDS, "waiting for its own link to be verified")
    attempt = submit.attempt_after(parent)
    existing = _existing_child(parent, attempt)
    if existing is not None:
        logger.info("Automatic retry of %s: %s retries it already", parent.batch_id, existing.batch_id)
        _note(parent, AutoRetryState.FOUND, retry_batch_id=existing.batch_id)
        return
    if not AUTO_SELECTION.lines(archive).exists():
        _note(parent, AutoRetryState.NOTHING)
        return
    token = uuid.uuid5(TOKEN_NAMESPACE, f"{parent.batch_id}:{attempt}")
    prepared = submit.prepare(parent, archive, AUTO_SELECTION, token=token, auto_retries=left - 1 or None)
    if not prepared.form.is_valid():
        problem = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in prepared.form.errors.items())
        _note(parent, AutoRetryState.FAILED, lines=prepared.lines, problem=problem)
        _audit(parent, Outcome.ERROR, detail=problem)
        raise reactions.Failed(problem)
    outcome = submit.create(prepared, user=AUTO_USER, by_person=False)
    if outcome.batch is None:
        logger.warning("Automatic retry of %s failed: %s", parent.batch_id, outcome.error)
        _note(parent, AutoRetryState.FAILED, lines=prepared.lines, problem=outcome.error)
        _audit(parent, Outcome.ERROR, detail=outcome.error)
        raise RuntimeError(outcome.error)  # tried again with backoff: the form token makes it one batch
    retry_id = outcome.batch.batch_id
    logger.info("Automatic retry of %s lines of %s: %s", prepared.lines, parent.batch_id, retry_id)
    _audit(parent, Outcome.ALREADY if outcome.repeated else Outcome.OK, batch_id=retry_id)
    first = _existing_child(parent, attempt, pages=1)
    if first is not None and first.batch_id != retry_id:
        _give_way(parent, outcome.batch, first)
        return
    _note(parent, AutoRetryState.SUBMITTED, lines=prepared.lines, retry_batch_id=retry_id)


def _give_way(parent: Batch, ours: Batch, first: Batch) -> None:
    """Another install sent the same retry at the same moment (both looked before either sent): every install keeps
    the first one made, by (created_at, batch_id), and cancels its own, so one runs whoever looks when."""
    cancelled = actions.cancel_batch(ours.batch_id, user=AUTO_USER, connection=parent.connection)
    problem = f"{ours.batch_id}, sent at the same moment by this install, was cancelled" + (
        f" (the cancel failed: {cancelled.error})" if cancelled.error else ""
    )
    logger.warning("Automatic retry of %s: %s retries it already; %s", parent.batch_id, first.batch_id, problem)
    audit_record(
        None,
        Action.CANCEL,
        Outcome.ERROR if cancelled.error else Outcome.OK,
        batch_id=ours.batch_id,
        target=f"duplicate automatic retry of {parent.batch_id} ({first.batch_id} was first)",
        detail=cancelled.error,
        username=AUTO_USER,
        connection=parent.connection_id,
    )
    _note(parent, AutoRetryState.FOUND, retry_batch_id=first.batch_id, problem=problem)


def _existing_child(parent: Batch, attempt: int, *, pages: int = AUTO_TOP_PAGES) -> Batch | None:
    """The first retry of `parent` with this attempt, made by any install: the top of the list is read (and
    recorded) first, so one made elsewhere since the last pass is seen."""
    client = services.get_client(connection=parent.connection)
    after = None
    for _page in range(pages):
        page = client.list_batches(after=after, limit=services.LIST_LIMIT_MAX)
        record_batches(page.data, connection=parent.connection)
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
    children = Batch.objects.filter(connection=parent.connection, retry_of=parent.batch_id, attempt=attempt)
    return children.order_by("created_at", "batch_id").first()


def _note(parent: Batch, state: str, *, lines: int = 0, retry_batch_id: str = "", problem: str = "") -> None:
    """What the automatic retry did, for the detail page (replaced if the reaction runs again)."""
    AutoRetry.objects.update_or_create(
        parent=parent,
        defaults={"state": state, "lines": lines, "retry_batch_id": retry_batch_id, "problem": problem},
    )


def _audit(parent, outcome: str, *, batch_id: str = "", detail: str = "") -> None:
    """The create goes to the audit log like a person's, by AUTO_USER, from no address, in the parent's connection
    (where the retry is made)."""
    target = f"retry of {parent.batch_id}: {AUTO_SELECTION.label} (automatic)"
    audit_record(
        None,
        Action.CREATE,
        outcome,
        batch_id=batch_id,
        target=target,
        detail=detail,
        username=AUTO_USER,
        connection=parent.connection_id,
    )
