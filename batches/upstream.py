"""Keeping the cache in step with the API: coalesced refreshes, cancel and create, and the outcomes pages show.

Views and management commands call these functions; they call the service module and record what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, close_old_connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from batches import services
from batches.models import CANCEL_CLAIM_SECONDS, Batch, BatchCreation, SyncState, payload_digest, record_batch

logger = logging.getLogger(__name__)

LIST_STATE = "list"
MAX_BACKOFF_SECONDS = 60.0
DATABASE_BUSY = "The dashboard's database is busy, so nothing was refreshed; showing the last known state."


@dataclass(frozen=True)
class Freshness:
    """How current the cached data on a page is, and why not, in words a user understands."""

    ok: bool
    as_of: datetime | None = None
    error_kind: str = ""  # "", "auth", "unavailable", "rate_limited", "error"
    error_message: str = ""
    consecutive_failures: int = 0
    # Nothing has been fetched yet and no attempt has failed: the first refresh is still running (elsewhere).
    pending: bool = False

    @property
    def is_stale(self) -> bool:
        return not self.ok

    @property
    def may_change(self) -> bool:
        """The next answer may differ from what is shown: pages keep polling."""
        return self.is_stale or self.pending

    @property
    def auth_failed(self) -> bool:
        return self.error_kind == "auth"

    @property
    def retry_seconds(self) -> float:
        """How long a polling page should wait before asking again: backs off while the API is failing."""
        return backoff_seconds(self.consecutive_failures)


@dataclass(frozen=True)
class SyncResult:
    """What one walk of the list did."""

    pages: int = 0
    seen: int = 0
    changed: int = 0
    retrieved: int = 0
    complete: bool = True  # False when it was stopped (shutdown) before reaching known batches


@dataclass(frozen=True)
class ListPass:
    """One attempt at refreshing the list: whether this caller did it, what it found and how long it took."""

    freshness: Freshness
    ran: bool = False  # False when another caller refreshed within the interval
    result: SyncResult | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.result.changed if self.result else 0

    def describe(self) -> str:
        """The sync loop's log line, in plain words; never contains the key (the service module redacts it)."""
        if not self.ran and self.freshness.is_stale:
            return (
                f"sync pass skipped: backing off after {self.freshness.consecutive_failures} failed "
                f"refresh{'' if self.freshness.consecutive_failures == 1 else 'es'} ({self.freshness.error_message})"
            )
        if not self.ran:
            return "sync pass skipped: the list was refreshed within the interval (by a viewer or another process)"
        if self.error:
            return f"sync pass failed after {self.seconds:.2f} s: {self.error}"
        result = self.result or SyncResult()
        line = (
            f"sync pass: {result.pages} page{'' if result.pages == 1 else 's'}, {result.seen} seen, "
            f"{result.changed} changed, {result.retrieved} retrieved in {self.seconds:.2f} s"
        )
        return line if result.complete else f"{line} (stopped before the end)"


def backoff_seconds(failures: int, base: float | None = None) -> float:
    base = max(settings.BATCHBOARD_REFRESH_INTERVAL if base is None else base, 1.0)
    return min(base * 2 ** min(failures, 6), MAX_BACKOFF_SECONDS) if failures else base


def error_kind(exc: services.BatchApiError) -> str:
    if isinstance(exc, services.AuthenticationFailed):
        return "auth"
    if isinstance(exc, services.RateLimited):
        return "rate_limited"
    if isinstance(exc, services.Unavailable):
        return "unavailable"
    return "error"


def failure_message(exc: services.BatchApiError, *, then: str = "", retry: str = "") -> str:
    """An upstream failure in words a user understands: what went wrong, then `then` (what it means where it
    happened), then `retry` if waiting may help (rate limiting, an API out of reach). The one place these are worded.

    Never contains the key: the service module redacts it from every message.
    """
    kind = error_kind(exc)
    transient = False
    if kind == "auth":
        cause = "The OpenAI API rejected the configured API key. Check OPENAI_API_KEY (and the organisation/project)."
    elif kind == "rate_limited" and exc.code == "insufficient_quota":
        cause = "The OpenAI account is out of quota."
    elif kind == "rate_limited":
        cause, transient = "The OpenAI API is rate limiting requests.", True
    elif kind == "unavailable":
        cause, transient = "Cannot reach the OpenAI API right now.", True
    elif exc.status:
        cause = f"The OpenAI API said: {exc.message}"
    else:
        cause = exc.message  # Raised by the service module itself, in its own words.
    return " ".join(part for part in (cause, then, retry if transient else "") if part)


def _freshness(state: SyncState | None) -> Freshness:
    if state is None:
        return Freshness(ok=True, pending=True)
    return Freshness(
        ok=not state.is_failing,
        as_of=state.succeeded_at,
        error_kind=state.error_kind if state.is_failing else "",
        error_message=state.error_message if state.is_failing else "",
        consecutive_failures=state.consecutive_failures,
        pending=state.succeeded_at is None and not state.is_failing,
    )


def _lease_seconds(state: SyncState, lease_seconds: float | None) -> float:
    """How long one refresh holds off the next: the interval, longer while the API keeps failing."""
    interval = settings.BATCHBOARD_REFRESH_INTERVAL if lease_seconds is None else lease_seconds
    if interval <= 0:
        return 0.0
    if state.is_failing:
        return max(interval, backoff_seconds(state.consecutive_failures, base=interval))
    return interval


def _claim(name: str, now: datetime, force: bool, lease_seconds: float | None = None) -> tuple[bool, SyncState]:
    """Take the lease for refreshing `name`: (True, state) for the one caller that should refresh now.

    Only one conditional UPDATE can move `claimed_at` past the lease, in any number of threads and processes: SQLite
    runs one writer at a time, and PostgreSQL re-checks the WHERE clause once it holds the row lock. A caller that
    reads a recent claim returns without writing, so a crowd of pollers costs one small read each.
    """
    state = SyncState.objects.filter(name=name).first()
    if state is None:
        state, _ = SyncState.objects.get_or_create(name=name)
    claim = SyncState.objects.filter(pk=state.pk)
    if not force:
        cutoff = now - timedelta(seconds=_lease_seconds(state, lease_seconds))
        if state.claimed_at is not None and state.claimed_at > cutoff:
            return False, state
        claim = claim.filter(Q(claimed_at__isnull=True) | Q(claimed_at__lte=cutoff))
    return claim.update(claimed_at=now) == 1, state


def _succeeded(name: str) -> None:
    SyncState.objects.filter(name=name).update(
        succeeded_at=timezone.now(), consecutive_failures=0, error_kind="", error_message=""
    )


def _failed(name: str, exc: services.BatchApiError) -> None:
    SyncState.objects.filter(name=name).update(
        failed_at=timezone.now(),
        error_kind=error_kind(exc),
        error_message=failure_message(exc),
        consecutive_failures=F("consecutive_failures") + 1,
    )


def list_freshness() -> Freshness:
    """How current the cached list is: one small query, no upstream call (every page's auth banner uses it)."""
    return _freshness(SyncState.objects.filter(name=LIST_STATE).first())


def refresh_list(*, force: bool = False, client: services.BatchClient | None = None) -> Freshness:
    """Bring the cache up to date with the API, at most once per interval across all callers and processes.

    The caller that wins the lease walks the list; everyone else gets the cache's freshness at once.
    """
    try:
        outcome = list_pass(force=force, client=client)
    except OperationalError as exc:
        logger.warning("List refresh skipped: %s", exc)
        return _database_busy(list_freshness().as_of)
    if outcome.error:
        logger.warning("List refresh failed: %s", outcome.error)
    return outcome.freshness


def list_pass(
    *,
    force: bool = False,
    client: services.BatchClient | None = None,
    lease_seconds: float | None = None,
    stop: threading.Event | None = None,
) -> ListPass:
    """One refresh of the list if this caller wins the lease (always with `force`); see refresh_list."""
    started = time.monotonic()
    claimed, state = _claim(LIST_STATE, timezone.now(), force, lease_seconds)
    if not claimed:
        return ListPass(freshness=_freshness(state))
    try:
        result = sync_batches(client or services.get_client(), stop=stop)
    except services.BatchApiError as exc:
        _failed(LIST_STATE, exc)
        return ListPass(
            freshness=list_freshness(),
            ran=True,
            error=f"{failure_message(exc)} [{exc}]",
            seconds=time.monotonic() - started,
        )
    if result.complete:
        _succeeded(LIST_STATE)
    return ListPass(freshness=list_freshness(), ran=True, result=result, seconds=time.monotonic() - started)


def sync_batches(
    client: services.BatchClient, *, stop: threading.Event | None = None, page_size: int = services.LIST_LIMIT_MAX
) -> SyncResult:
    """Walk the list newest first until it reaches the batches a previous complete walk already covered, then
    retrieve every cached batch that is not final and was not on the pages walked.

    The stopping point is the top of the last walk that ran to its end (SyncState.high_water_id), not "a page of
    known batches": a walk interrupted halfway leaves older batches unknown, and they must not be skipped for ever.
    Several walks at once are harmless (record_batch serialises per batch), only wasteful; the lease prevents them.
    `stop` abandons the walk between two upstream calls.
    """
    mark = SyncState.objects.filter(name=LIST_STATE).values_list("high_water_id", flat=True).first() or ""
    mark_created = Batch.objects.filter(batch_id=mark).values_list("created_at", flat=True).first() if mark else None
    pages = seen = changed = retrieved = 0
    top_id = ""
    seen_ids: set[str] = set()
    for page in client.iter_batch_pages(limit=page_size):
        pages += 1
        top_id = top_id or (page.data[0].id if page.data else "")
        changed += _record_page(page.data)
        seen += len(page.data)
        seen_ids.update(batch.id for batch in page.data)
        if _reached(page, mark, mark_created):
            break
        if stop is not None and stop.is_set() and page.has_more:
            return SyncResult(pages=pages, seen=seen, changed=changed, complete=False)
    if top_id:
        SyncState.objects.update_or_create(name=LIST_STATE, defaults={"high_water_id": top_id})
    # In Python, not as NOT IN (...): after a full walk seen_ids can outgrow SQLite's limit on query parameters.
    active = Batch.objects.active().order_by("last_seen_at").values_list("batch_id", flat=True)
    for batch_id in [batch_id for batch_id in active if batch_id not in seen_ids]:
        if stop is not None and stop.is_set():
            return SyncResult(pages=pages, seen=seen, changed=changed, retrieved=retrieved, complete=False)
        try:
            batch = client.retrieve_batch(batch_id)
        except services.NotFound:
            continue  # Deleted upstream (or another project's); keep what we knew.
        retrieved += 1
        stored = Batch.objects.filter(batch_id=batch_id).values_list("payload_hash", flat=True).first()
        changed += _record_changed(batch, payload_digest(batch.raw), timezone.now(), stored)
    return SyncResult(pages=pages, seen=seen, changed=changed, retrieved=retrieved)


def _reached(page: services.BatchPage, mark: str, mark_created: datetime | None) -> bool:
    """True once the page goes below the second in which the previous complete walk's top batch was created.

    Not merely "the page holds that batch": batches created in the same second are ordered among themselves by id
    (or however the API likes), so one created just after the walk may sort below its top batch.
    """
    if not mark or not page.data:
        return False
    if mark_created is None:  # The mark's row was deleted locally: fall back on meeting its id.
        return any(batch.id == mark for batch in page.data)
    oldest = page.data[-1].created_at
    return bool(oldest) and oldest < int(mark_created.timestamp())


def _record_page(batches: tuple[services.Batch, ...]) -> int:
    """Record a page of the list: one query finds the unchanged batches, only the others go through record_batch."""
    now = timezone.now()
    digests = {batch.id: payload_digest(batch.raw) for batch in batches}
    known = dict(Batch.objects.filter(batch_id__in=digests).values_list("batch_id", "payload_hash"))
    unchanged = [batch_id for batch_id, digest in digests.items() if known.get(batch_id) == digest]
    if unchanged:
        Batch.objects.filter(batch_id__in=unchanged, last_seen_at__lt=now).update(last_seen_at=now)
    return sum(
        _record_changed(batch, digests[batch.id], now, known.get(batch.id))
        for batch in batches
        if batch.id not in unchanged
    )


def _record_changed(batch: services.Batch, digest: str, observed_at: datetime, stored: str | None) -> int:
    """1 when recording this observation changed the stored state (a late, older answer does not).

    `stored` is the payload hash the cache held when the caller looked (None for a batch it did not have).
    """
    if stored == digest:
        Batch.objects.filter(batch_id=batch.id, last_seen_at__lt=observed_at).update(last_seen_at=observed_at)
        return 0
    return int(record_batch(batch, observed_at=observed_at).payload_hash == digest)


def sync_loop(stop: threading.Event, *, interval: float, quiet: bool = False) -> None:
    """Refresh the list every `interval` seconds until `stop` is set, with one log line per pass.

    Loops in several processes (or machines) share the list's lease, so they do not all walk within one interval;
    neither do they when viewers' page loads refreshed recently. `quiet` logs passes that changed nothing at DEBUG.
    """
    while not stop.is_set():
        close_old_connections()
        try:
            outcome = list_pass(lease_seconds=interval, stop=stop)
        except DatabaseError as exc:
            logger.error("sync pass failed: database error: %s", exc)
        except Exception:
            logger.exception("sync pass failed unexpectedly")
        else:
            if outcome.error:
                level = logging.WARNING
            elif quiet and not outcome.changed:
                level = logging.DEBUG
            else:
                level = logging.INFO
            logger.log(level, "%s", outcome.describe())
        finally:
            close_old_connections()
        stop.wait(interval)


def refresh_batch(batch_id: str, *, client: services.BatchClient | None = None) -> tuple[Batch | None, Freshness]:
    """The cached batch, refreshed from the API unless it is final or was seen within the interval.

    Raises services.NotFound only for a batch that the API does not know and the cache has never seen.
    Other API failures, and a database too busy to record anything, return the cached row (or None) with a stale
    Freshness.
    """
    row = Batch.objects.filter(batch_id=batch_id).first()
    if row is not None and row.is_terminal:
        return row, Freshness(ok=True, as_of=row.last_seen_at)
    now = timezone.now()
    interval = settings.BATCHBOARD_REFRESH_INTERVAL
    if row is not None and interval > 0 and row.last_seen_at > now - timedelta(seconds=interval):
        return row, Freshness(ok=True, as_of=row.last_seen_at)  # The list walk (or another viewer) just saw it.
    try:
        return _refresh_from_api(batch_id, row, now, client)
    except OperationalError as exc:
        logger.warning("Refresh of %s skipped: %s", batch_id, exc)
        return row, _database_busy(row.last_seen_at if row else None)


def _refresh_from_api(
    batch_id: str, row: Batch | None, now: datetime, client: services.BatchClient | None
) -> tuple[Batch | None, Freshness]:
    """refresh_batch's upstream part: take the batch's lease, fetch it, record the answer or the failure."""
    name = f"batch:{batch_id}"
    claimed, _ = _claim(name, now, force=row is None)
    if not claimed:
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


def _database_busy(as_of: datetime | None) -> Freshness:
    """A refresh whose writes waited out the database's lock timeout (SQLite during a VACUUM or a long prune, say).

    Reads still work (WAL), so the page shows the cache with this notice instead of failing.
    """
    return Freshness(ok=False, as_of=as_of, error_kind="error", error_message=DATABASE_BUSY)


def _freshness_for_row(name: str, row: Batch | None) -> Freshness:
    freshness = _freshness(SyncState.objects.filter(name=name).first())
    if row is not None and (freshness.as_of is None or row.last_seen_at > freshness.as_of):
        freshness = dataclasses.replace(freshness, as_of=row.last_seen_at)
    return freshness


@dataclass(frozen=True)
class CancelOutcome:
    batch: Batch | None
    sent: bool  # an upstream cancel was sent by this call
    error: str = ""

    @property
    def result(self) -> str:
        """ "cancelled" (this call asked the API), "already" (someone already had), or "error"."""
        if self.error:
            return "error"
        return "cancelled" if self.sent else "already"

    @property
    def message(self) -> str:
        """The outcome in words a user understands."""
        if self.error:
            return self.error
        if self.sent:
            return "Cancel requested. Requests already running finish; the rest will not run."
        return "A cancel was already requested for this batch."


NOTHING_CANCELLED = "Nothing was cancelled."


def cancel_batch(batch_id: str, *, user: str = "", client: services.BatchClient | None = None) -> CancelOutcome:
    """Cancel once: concurrent or repeated requests for the same batch result in a single upstream call.

    The claim is a conditional UPDATE of cancel_requested_at; a claim left by a request that died before reaching
    the API expires after CANCEL_CLAIM_SECONDS.
    """
    row = Batch.objects.filter(batch_id=batch_id).first()
    if row is None:
        try:
            row, freshness = refresh_batch(batch_id, client=client)
        except services.NotFound:
            return CancelOutcome(None, sent=False, error="There is no batch with this id.")
        if row is None:
            return CancelOutcome(None, sent=False, error=f"{freshness.error_message} {NOTHING_CANCELLED}".strip())
    now = timezone.now()
    unclaimed = Q(cancel_requested_at__isnull=True) | Q(
        cancel_requested_at__lt=now - timedelta(seconds=CANCEL_CLAIM_SECONDS)
    )
    claimed = Batch.objects.filter(unclaimed, pk=row.pk, status__in=services.CANCELLABLE_STATUSES).update(
        cancel_requested_at=now, cancel_requested_by=user[:150]
    )
    if not claimed:
        row.refresh_from_db()
        if row.cancel_pending or row.status in ("cancelling", "cancelled"):
            return CancelOutcome(row, sent=False)
        return CancelOutcome(row, sent=False, error=_finished_message(row))
    try:
        batch = (client or services.get_client()).cancel_batch(batch_id)
    except services.BatchApiError as exc:
        # Release our own claim only: a call that outlived CANCEL_CLAIM_SECONDS may have been claimed over.
        Batch.objects.filter(pk=row.pk, cancel_requested_at=now).update(
            cancel_requested_at=None, cancel_requested_by=""
        )
        logger.warning("Cancel of %s failed: %s", batch_id, exc)
        if isinstance(exc, services.BadRequest):
            # A 409: the batch finished after our cache last saw it. Record its real state so the page shows it.
            _refresh_quietly(batch_id, client)
        row.refresh_from_db()
        return CancelOutcome(row, sent=False, error=_cancel_failure(exc, row))
    logger.info("Cancel of %s requested by %s", batch_id, user or "unknown user")
    return CancelOutcome(record_batch(batch), sent=True)


def cancel_batches(
    batch_ids: list[str], *, user: str = "", client: services.BatchClient | None = None
) -> list[tuple[str, CancelOutcome]]:
    """Cancel each batch once, in the order given (duplicates ignored); one failure does not stop the others."""
    client = client or services.get_client()
    return [(batch_id, cancel_batch(batch_id, user=user, client=client)) for batch_id in dict.fromkeys(batch_ids)]


def _finished_message(row: Batch) -> str:
    return f"This batch has already finished ({row.badge[1]}); there is nothing to cancel."


def _cancel_failure(exc: services.BatchApiError, row: Batch) -> str:
    if isinstance(exc, services.NotFound):
        return "The OpenAI API does not know this batch any more (deleted, or another project); nothing was cancelled."
    if isinstance(exc, services.BadRequest):
        if row.is_terminal:
            return _finished_message(row)
        return f"The OpenAI API refused to cancel this batch: {exc.message}"
    # After no answer (or a server error) nobody knows whether the cancel took effect; any other answer refused it.
    then = "The cancel may not have gone through." if isinstance(exc, services.Unavailable) else NOTHING_CANCELLED
    return failure_message(exc, then=then, retry="Try again in a moment.")


def _refresh_quietly(batch_id: str, client: services.BatchClient | None) -> None:
    """After a refused cancel the batch has usually just finished: record its real state if we can."""
    with contextlib.suppress(services.BatchApiError):
        record_batch((client or services.get_client()).retrieve_batch(batch_id))


# --- Creating a batch -------------------------------------------------------

# How long a repeated submission waits for the first one (a double click) to finish before saying it is still busy.
CREATE_WAIT_SECONDS = 30.0
NOTHING_CREATED = "Nothing was created."


@dataclass(frozen=True)
class CreateOutcome:
    """What a create submission did: a recorded batch, or an error for the form (and nothing half-done hidden)."""

    batch: Batch | None = None
    repeated: bool = False  # the token had created this batch already; nothing was sent upstream this time
    error: str = ""
    error_field: str | None = None  # the form field the error belongs to; None for the whole form
    uploaded_file_id: str = ""  # the upload worked but the create did not: the batch can be created from this id


def create_batch(
    *,
    token: uuid.UUID,
    endpoint: str,
    user: str = "",
    upload=None,
    filename: str = "",
    input_file_id: str = "",
    completion_window: str = "24h",
    metadata: dict[str, str] | None = None,
    output_expires_after: int | None = None,
    client: services.BatchClient | None = None,
) -> CreateOutcome:
    """Upload the input file (or check the given file id), create the batch and record it: once per form token.

    The token is claimed with a unique row before anything is sent, so a repeated or concurrent submission of the
    same form waits for the first one and gets the same batch. A failed attempt releases the token for a retry.
    """
    claim, claimed = _claim_creation(token, user)
    if not claimed:
        return _earlier_outcome(claim, user)
    client = client or services.get_client()
    if upload is not None:
        try:
            upload.seek(0)
            input_file_id = client.upload_fileobj(upload, filename=_upload_name(filename)).id
        except services.BatchApiError as exc:
            logger.warning("Upload for a new batch failed: %s", exc)
            return _release(
                claim, f"Uploading the file failed. {_create_failure(exc, then=NOTHING_CREATED)}", "input_file"
            )
        BatchCreation.objects.filter(pk=claim.pk).update(input_file_id=input_file_id)
    else:
        try:
            problem = _input_file_problem(client, input_file_id)
        except services.BatchApiError as exc:
            problem = f"Checking the file failed. {_create_failure(exc, then=NOTHING_CREATED)}"
        if problem:
            return _release(claim, problem, "input_file_id")
    try:
        batch = client.create_batch(
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata or None,
            output_expires_after=output_expires_after,
        )
    except services.BatchApiError as exc:
        logger.warning("Create of a batch from %s failed: %s", input_file_id, exc)
        then = ""
        if isinstance(exc, services.Unavailable):
            then = "If the request reached the API anyway, the batch will appear in the list; look there first."
        message = f"Creating the batch failed. {_create_failure(exc, then=then)}"
        if upload is not None:
            message = f"The file was uploaded as {input_file_id}, but no batch was made from it. {message}"
            return _release(claim, message, None, uploaded_file_id=input_file_id)
        return _release(claim, message, None)
    row = record_batch(batch)
    BatchCreation.objects.filter(pk=claim.pk).update(batch_id=batch.id)
    logger.info("Batch %s created from %s by %s", batch.id, input_file_id, user or "unknown user")
    return CreateOutcome(batch=row)


def _claim_creation(token: uuid.UUID, user: str) -> tuple[BatchCreation | None, bool]:
    """(claim, True) when this call owns the token; else the existing claim, once it has a batch or the wait ends."""
    deadline = time.monotonic() + CREATE_WAIT_SECONDS
    while True:
        try:
            with transaction.atomic():
                return BatchCreation.objects.create(token=token, created_by=user[:150]), True
        except IntegrityError:
            pass
        claim = BatchCreation.objects.filter(token=token).first()
        if claim is not None and (claim.batch_id or claim.created_by != user[:150] or time.monotonic() >= deadline):
            return claim, False
        time.sleep(0.2)  # The first submission is still uploading or creating (or gave up: then claim again).


def _earlier_outcome(claim: BatchCreation, user: str) -> CreateOutcome:
    if claim.created_by != user[:150]:
        return CreateOutcome(error="This form has already been used. Reload the page to start a new batch.")
    row = Batch.objects.filter(batch_id=claim.batch_id).first() if claim.batch_id else None
    if row is not None:
        return CreateOutcome(batch=row, repeated=True)
    return CreateOutcome(
        error="This form is still being submitted (the first submission is uploading or creating the batch). "
        "It will appear in the list of batches when it is done; reload this page to start a new batch."
    )


def _release(claim: BatchCreation, error: str, field: str | None, uploaded_file_id: str = "") -> CreateOutcome:
    """Give the token back, so submitting the same form again tries again."""
    claim.delete()
    return CreateOutcome(error=error, error_field=field, uploaded_file_id=uploaded_file_id)


def _upload_name(filename: str) -> str:
    # The API accepts batch input only from a file whose name ends in .jsonl.
    filename = filename or "batch-input"
    return filename if filename.lower().endswith(".jsonl") else f"{filename}.jsonl"


def _input_file_problem(client: services.BatchClient, file_id: str) -> str:
    try:
        file = client.retrieve_file(file_id)
    except services.NotFound:
        return f"There is no file {file_id}: it may have expired, been deleted, or belong to another project."
    if file.purpose != "batch":
        return f"{file_id} was uploaded with purpose “{file.purpose}”; a batch needs a file with purpose “batch”."
    if file.bytes > services.MAX_INPUT_FILE_BYTES:
        return f"{file_id} is larger than the 200 MB a batch input may be."
    return ""


def _create_failure(exc: services.BatchApiError, *, then: str) -> str:
    return failure_message(exc, then=then, retry="Wait a moment and submit again.")
