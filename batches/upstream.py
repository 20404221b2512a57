"""Keeping the cache in step with the API: coalesced refreshes, cancel, and the outcome pages show.

Views and management commands call these functions; they call the service module and record what it returns.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from batches import services
from batches.models import Batch, SyncState, payload_digest, record_batch

logger = logging.getLogger(__name__)

LIST_STATE = "list"
MAX_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class Freshness:
    """How current the cached data on a page is, and why not, in words a user understands."""

    ok: bool
    as_of: datetime | None = None
    error_kind: str = ""  # "", "auth", "unavailable", "rate_limited", "error"
    error_message: str = ""
    consecutive_failures: int = 0

    @property
    def is_stale(self) -> bool:
        return not self.ok

    @property
    def auth_failed(self) -> bool:
        return self.error_kind == "auth"

    @property
    def retry_seconds(self) -> float:
        """How long a polling page should wait before asking again: backs off while the API is failing."""
        return backoff_seconds(self.consecutive_failures)


@dataclass(frozen=True)
class SyncResult:
    pages: int = 0
    seen: int = 0
    changed: int = 0
    retrieved: int = 0


def backoff_seconds(failures: int) -> float:
    base = max(settings.BATCHBOARD_REFRESH_INTERVAL, 1.0)
    return min(base * 2 ** min(failures, 6), MAX_BACKOFF_SECONDS) if failures else base


def error_kind(exc: services.BatchApiError) -> str:
    if isinstance(exc, services.AuthenticationFailed):
        return "auth"
    if isinstance(exc, services.RateLimited):
        return "rate_limited"
    if isinstance(exc, services.Unavailable):
        return "unavailable"
    return "error"


def user_message(exc: services.BatchApiError) -> str:
    """What to tell a user about an upstream failure; never contains the key (the service module redacts it)."""
    kind = error_kind(exc)
    if kind == "auth":
        return "The OpenAI API rejected the configured API key. Check OPENAI_API_KEY (and the organisation/project)."
    if kind == "rate_limited":
        if exc.code == "insufficient_quota":
            return "The OpenAI account is out of quota."
        return "The OpenAI API is rate limiting requests; retrying shortly."
    if kind == "unavailable":
        return "Cannot reach the OpenAI API right now; showing the last known state."
    return exc.message


def _freshness(state: SyncState | None) -> Freshness:
    if state is None:
        return Freshness(ok=True)
    return Freshness(
        ok=not state.is_failing,
        as_of=state.succeeded_at,
        error_kind=state.error_kind if state.is_failing else "",
        error_message=state.error_message if state.is_failing else "",
        consecutive_failures=state.consecutive_failures,
    )


def _claim(name: str, now: datetime, force: bool) -> bool:
    """Take the lease for refreshing `name`; False when another caller refreshed (or is refreshing) recently."""
    state, _ = SyncState.objects.get_or_create(name=name)
    if force:
        SyncState.objects.filter(pk=state.pk).update(claimed_at=now)
        return True
    wait = timedelta(seconds=backoff_seconds(state.consecutive_failures if state.is_failing else 0))
    if settings.BATCHBOARD_REFRESH_INTERVAL <= 0:
        wait = timedelta(0)
    claimed = (
        SyncState.objects.filter(pk=state.pk)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lte=now - wait))
        .update(claimed_at=now)
    )
    return claimed == 1


def _succeeded(name: str) -> None:
    SyncState.objects.filter(name=name).update(
        succeeded_at=timezone.now(), consecutive_failures=0, error_kind="", error_message=""
    )


def _failed(name: str, exc: services.BatchApiError) -> None:
    state = SyncState.objects.get(name=name)
    state.failed_at = timezone.now()
    state.error_kind = error_kind(exc)
    state.error_message = user_message(exc)
    state.consecutive_failures += 1
    state.save(update_fields=["failed_at", "error_kind", "error_message", "consecutive_failures"])


def list_freshness() -> Freshness:
    return _freshness(SyncState.objects.filter(name=LIST_STATE).first())


def refresh_list(*, force: bool = False, client: services.BatchClient | None = None) -> Freshness:
    """Bring the cache up to date with the API, at most once per interval across all callers."""
    if _claim(LIST_STATE, timezone.now(), force):
        try:
            result = sync_batches(client or services.get_client())
        except services.BatchApiError as exc:
            logger.warning("List refresh failed: %s", exc)
            _failed(LIST_STATE, exc)
        else:
            logger.debug("List refresh: %s", result)
            _succeeded(LIST_STATE)
    return list_freshness()


def sync_batches(client: services.BatchClient) -> SyncResult:
    """Walk the list newest first until a page holds only batches already known to be final, then
    retrieve every cached batch that is still not final and was not on those pages."""
    pages = seen = changed = retrieved = 0
    seen_ids: set[str] = set()
    for page in client.iter_batch_pages():
        pages += 1
        ids = [b.id for b in page.data]
        known = dict(Batch.objects.filter(batch_id__in=ids).values_list("batch_id", "payload_hash"))
        final_ids = set(Batch.objects.filter(batch_id__in=ids, is_terminal=True).values_list("batch_id", flat=True))
        changed += _record_page(page.data, known)
        seen += len(ids)
        seen_ids.update(ids)
        if ids and final_ids.issuperset(ids):
            break
    for batch_id in Batch.objects.active().exclude(batch_id__in=seen_ids).values_list("batch_id", flat=True):
        try:
            batch = client.retrieve_batch(batch_id)
        except services.NotFound:
            continue  # Deleted upstream (or another project); keep what we knew.
        retrieved += 1
        before = Batch.objects.filter(batch_id=batch_id).values_list("payload_hash", flat=True).first()
        changed += record_batch(batch).payload_hash != before
    return SyncResult(pages=pages, seen=seen, changed=changed, retrieved=retrieved)


def _record_page(batches: tuple[services.Batch, ...], known: dict[str, str]) -> int:
    now = timezone.now()
    unchanged = [b.id for b in batches if known.get(b.id) == payload_digest(b.raw)]
    if unchanged:
        Batch.objects.filter(batch_id__in=unchanged).update(last_seen_at=now)
    changed = [b for b in batches if b.id not in unchanged]
    for batch in changed:
        record_batch(batch, observed_at=now)
    return len(changed)


def refresh_batch(batch_id: str, *, client: services.BatchClient | None = None) -> tuple[Batch | None, Freshness]:
    """The cached batch, refreshed from the API unless it is final or was refreshed within the interval.

    Raises services.NotFound only for a batch that the API does not know and the cache has never seen.
    Other API failures return the cached row (or None) with a stale Freshness.
    """
    row = Batch.objects.filter(batch_id=batch_id).first()
    if row is not None and row.is_terminal:
        return row, Freshness(ok=True, as_of=row.last_seen_at)
    name = f"batch:{batch_id}"
    if not _claim(name, timezone.now(), force=row is None):
        return row, _freshness_for_row(name, row)
    try:
        batch = (client or services.get_client()).retrieve_batch(batch_id)
    except services.NotFound:
        SyncState.objects.filter(name=name).delete()
        if row is None:
            raise
        return row, Freshness(
            ok=False,
            as_of=row.last_seen_at,
            error_kind="error",
            error_message="The API no longer knows this batch; showing the last known state.",
        )
    except services.BatchApiError as exc:
        logger.warning("Refresh of %s failed: %s", batch_id, exc)
        _failed(name, exc)
        return row, _freshness_for_row(name, row)
    _succeeded(name)
    row = record_batch(batch)
    return row, Freshness(ok=True, as_of=row.last_seen_at)


def _freshness_for_row(name: str, row: Batch | None) -> Freshness:
    freshness = _freshness(SyncState.objects.filter(name=name).first())
    if row is not None and (freshness.as_of is None or row.last_seen_at > freshness.as_of):
        freshness = Freshness(**{**freshness.__dict__, "as_of": row.last_seen_at})
    return freshness


@dataclass(frozen=True)
class CancelOutcome:
    batch: Batch | None
    sent: bool  # an upstream cancel was sent by this call
    error: str = ""


def cancel_batch(batch_id: str, *, user: str = "", client: services.BatchClient | None = None) -> CancelOutcome:
    """Cancel once: concurrent or repeated requests for the same batch result in a single upstream call."""
    row = Batch.objects.filter(batch_id=batch_id).first()
    if row is None:
        try:
            row, _ = refresh_batch(batch_id, client=client)
        except services.NotFound:
            return CancelOutcome(None, sent=False, error="There is no batch with this id.")
        if row is None:
            return CancelOutcome(None, sent=False, error="Cannot reach the OpenAI API to cancel this batch.")
    claimed = Batch.objects.filter(
        pk=row.pk, status__in=services.CANCELLABLE_STATUSES, cancel_requested_at__isnull=True
    ).update(cancel_requested_at=timezone.now(), cancel_requested_by=user[:150])
    if not claimed:
        row.refresh_from_db()
        if row.cancel_requested_at or row.status in ("cancelling", "cancelled"):
            return CancelOutcome(row, sent=False)
        return CancelOutcome(row, sent=False, error=f"This batch is already {row.get_status_display()}.")
    try:
        batch = (client or services.get_client()).cancel_batch(batch_id)
    except services.BatchApiError as exc:
        Batch.objects.filter(pk=row.pk).update(cancel_requested_at=None, cancel_requested_by="")
        row.refresh_from_db()
        logger.warning("Cancel of %s failed: %s", batch_id, exc)
        if isinstance(exc, services.NotFound):
            message = "The API does not know this batch any more."
        elif isinstance(exc, services.BadRequest):
            message = f"The API refused to cancel: {exc.message}"
            _refresh_quietly(batch_id, client)
            row.refresh_from_db()
        else:
            message = user_message(exc)
        return CancelOutcome(row, sent=False, error=message)
    logger.info("Cancel of %s requested by %s", batch_id, user or "unknown user")
    return CancelOutcome(record_batch(batch), sent=True)


def _refresh_quietly(batch_id: str, client: services.BatchClient | None) -> None:
    """After a refused cancel the batch has usually just finished: record its real state if we can."""
    with contextlib.suppress(services.BatchApiError):
        record_batch((client or services.get_client()).retrieve_batch(batch_id))
