"""Automatic retries: when a batch created with "retry lines that fail with 429/5xx or expire, up to N times" is
final and its results are kept, a task worker submits a retry of those lines, once (on results_kept).

Cost model: one query per pass finds kept batches asking for a retry that have no claim yet (an anti-join on a
unique row); each is claimed with an INSERT on that unique row, so two loops, or a loop restarted halfway, never
submit it twice. The create itself uses a form token derived from the parent's id, so even a claim taken over after
a crash sends at most one batch.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from audit.log import record as audit_record
from audit.models import Action, Outcome
from results.models import ArchiveState, ResultArchive, ResultFilter
from retries import submit
from retries.lineage import job_id_of
from retries.models import AUTO_RETRY_KEY, MAX_AUTO_RETRIES, AutoRetry, AutoRetryState
from retries.selection import RetrySelection

logger = logging.getLogger("batches.retries")

AUTO_SELECTION = RetrySelection("transient", ResultFilter())
AUTO_USER = "batchboard (automatic retry)"
PER_PASS = 2
# A claim older than this belongs to a process that died: another pass takes it over (same token, same batch).
CLAIM_SECONDS = 1800
TOKEN_NAMESPACE = uuid.UUID("5b0c1f0e-2a53-4f4e-9a55-3f0f2d7a1c11")


def retries_left(metadata: dict) -> int:
    """The N of the batch's metadata, within 0..MAX_AUTO_RETRIES; 0 for anything else."""
    raw = str(metadata.get(AUTO_RETRY_KEY, "")).strip()
    return min(int(raw), MAX_AUTO_RETRIES) if raw.isdigit() else 0


def _due():
    stale = timezone.now() - timedelta(seconds=CLAIM_SECONDS)
    unclaimed = Q(batch__auto_retry__isnull=True) | Q(
        batch__auto_retry__state=AutoRetryState.CLAIMED, batch__auto_retry__claimed_at__lt=stale
    )
    return (
        ResultArchive.objects.filter(state=ArchiveState.READY, batch__search_text__contains=AUTO_RETRY_KEY)
        .filter(unclaimed)
        .select_related("batch")
        .order_by("archived_at", "pk")
    )


def _claim(archive: ResultArchive) -> AutoRetry | None:
    now = timezone.now()
    try:
        with transaction.atomic():
            return AutoRetry.objects.create(parent=archive.batch, claimed_at=now)
    except IntegrityError:
        pass
    stale = now - timedelta(seconds=CLAIM_SECONDS)
    taken = AutoRetry.objects.filter(parent=archive.batch, state=AutoRetryState.CLAIMED, claimed_at__lt=stale).update(
        claimed_at=now
    )
    return AutoRetry.objects.get(parent=archive.batch) if taken else None


def retry_one(archive: ResultArchive, claim: AutoRetry) -> AutoRetry:
    parent = archive.batch
    left = retries_left(parent.metadata)
    if left <= 0 or not AUTO_SELECTION.lines(archive).exists():
        claim.state = AutoRetryState.NOTHING
        claim.save(update_fields=["state"])
        return claim
    token = uuid.uuid5(TOKEN_NAMESPACE, parent.batch_id)
    prepared = submit.prepare(
        parent, archive, AUTO_SELECTION, job_id_of(parent), token=token, auto_retries=left - 1 or None
    )
    claim.lines = prepared.lines
    if not prepared.form.is_valid():
        claim.state, claim.problem = (
            AutoRetryState.FAILED,
            "; ".join(f"{name}: {' '.join(errors)}" for name, errors in prepared.form.errors.items()),
        )
    else:
        outcome = submit.create(prepared, user=AUTO_USER, by_person=False)
        if outcome.batch is not None:
            claim.state, claim.retry_batch_id = AutoRetryState.SUBMITTED, outcome.batch.batch_id
            logger.info("Automatic retry of %s lines of %s: %s", prepared.lines, parent.batch_id, claim.retry_batch_id)
        else:
            claim.state, claim.problem = AutoRetryState.FAILED, outcome.error
            logger.warning("Automatic retry of %s failed: %s", parent.batch_id, outcome.error)
    claim.save(update_fields=["state", "lines", "retry_batch_id", "problem"])
    _audit(parent.batch_id, claim)
    return claim


def _audit(parent_id: str, claim: AutoRetry) -> None:
    """The create goes to the audit log like a person's (issue 18, finding 9), by AUTO_USER, from no address."""
    outcome = {AutoRetryState.SUBMITTED: Outcome.OK, AutoRetryState.FAILED: Outcome.ERROR}[claim.state]
    target = f"retry of {parent_id}: {AUTO_SELECTION.label} (automatic)"
    audit_record(
        None,
        Action.CREATE,
        outcome,
        batch_id=claim.retry_batch_id,
        target=target,
        detail=claim.problem,
        username=AUTO_USER,
    )


def retry_due(limit: int = PER_PASS) -> int:
    """Submit the automatic retries that are due. Returns how many claims were handled."""
    handled = 0
    for archive in _due()[:limit]:
        claim = _claim(archive)
        if claim is not None:
            retry_one(archive, claim)
            handled += 1
    return handled


def retry_when_kept(sender, batch_pk: int, batch_id: str, **kwargs) -> None:
    """results_kept (on a task worker, after the files are indexed): submit the automatic retries that are due.
    Interim: the retries app's own reaction replaces this. Failures are logged, never raised into the worker."""
    try:
        retry_due()
    except Exception:
        logger.exception("Automatic retries failed unexpectedly")
