"""Keeping the cache in step with the API: the sync loop and its passes, and how fresh the list is.

A pass, run by one loop at a time under a lease renewed page by page:

1. The top walk: list pages newest first until the page goes below both the previous pass's high-water mark and
   the creation time of the oldest batch that is not final (and that the walk can reach in MAX_WALK_PAGES pages).
   The list is ordered by creation and a batch's status changes without moving it, so every running batch is
   refreshed by the pages themselves, 100 per call. Cost: ceil(running window / 100) + 1 calls.
2. The import (until it has reached the oldest batch): continue listing from the saved cursor for up to
   IMPORT_SLICE_SECONDS, saving the cursor with each page, so a restart continues where it stopped.
3. The deep retrieves: a running batch the walk would need more than MAX_WALK_PAGES pages to reach is retrieved on
   its own, at most MAX_RETRIEVES_PER_PASS per pass, the longest-unchecked first.

Pages never call upstream for the list: they read the cache and `list_freshness()`, and note that someone is
watching, which makes the loop refresh every BATCHBOARD_REFRESH_INTERVAL instead of every
BATCHBOARD_HISTORY_INTERVAL. `loop_status()` is what /metrics and /readyz read.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, OperationalError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from batches import services
from batches.models import Batch, SyncState, payload_digest, record_batch_or_skip, record_new_batches
from results import archive as results_archive

logger = logging.getLogger(__name__)

LIST_STATE = "list"
PAGE_SIZE = services.LIST_LIMIT_MAX
# A running batch further down the cache than this many pages is retrieved on its own rather than walked to.
MAX_WALK_PAGES = 10
MAX_RETRIEVES_PER_PASS = 20
# One pass imports for at most this long, so that the top of the list keeps being refreshed during a long import.
IMPORT_SLICE_SECONDS = 60.0
# The loop's lease: renewed after every upstream call, so only a dead loop's lease expires.
LEASE_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 60.0
# A viewer's poll is noted at most this often (one small write), however many viewers poll.
WATCH_NOTE_SECONDS = 1.0


@dataclass(frozen=True)
class Freshness:
    """How current the cached data on a page is, and why not, in words a user understands."""

    ok: bool
    as_of: datetime | None = None
    error_kind: str = ""  # "", "auth", "unavailable", "rate_limited", "budget", "limited", "error"
    error_message: str = ""
    consecutive_failures: int = 0
    # Nothing has been fetched yet and no attempt has failed: the first pass has not run (or not finished).
    pending: bool = False
    # The sync loop's last sign of life is older than stale_after(): nothing keeps the list current.
    not_refreshing: bool = False
    heartbeat_at: datetime | None = None
    # The last pass stopped early because the upstream budget was spent: data may be older than the interval.
    budget_limited: bool = False
    # The history import is running: how many batches so far, and back to which creation date.
    importing: bool = False
    imported: int = 0
    import_reached: datetime | None = None
    watched_at: datetime | None = field(default=None, compare=False)

    @property
    def may_change(self) -> bool:
        """The next answer may differ from what is shown: pages keep polling."""
        return not self.ok or self.pending or self.importing or self.budget_limited

    @property
    def auth_failed(self) -> bool:
        return self.error_kind == "auth"

    @property
    def retry_seconds(self) -> float:
        """How long a polling page should wait before asking again: backs off while the API is failing."""
        return backoff_seconds(self.consecutive_failures)

    def display_key(self) -> tuple:
        """Everything a page shows of this freshness (for caching renderings), to the minute for the heartbeat."""
        heartbeat = self.heartbeat_at.replace(second=0, microsecond=0) if self.heartbeat_at else None
        return (
            self.ok,
            self.error_kind,
            self.error_message,
            self.pending,
            self.not_refreshing and heartbeat,
            self.budget_limited,
            self.importing and (self.imported, self.import_reached),
        )


@dataclass
class SyncResult:
    """What one pass did; `became_final` holds the batches it saw turn final."""

    pages: int = 0
    seen: int = 0
    changed: int = 0
    retrieved: int = 0
    imported: int = 0
    import_calls: int = 0  # list calls made by the import (the rest of `pages` were the top walk's)
    complete: bool = False  # the top walk reached known ground (the list is current)
    stopped: str = ""  # "", "stop" (shutdown), "budget", "lease" (another loop took over)
    skipped: int = 0  # batches the database refused (logged, counted in SyncState.skipped_total)
    became_final: list[str] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set, repr=False)


@dataclass(frozen=True)
class PassOutcome:
    """One attempt at a pass: whether this loop ran it, what it found and how long it took."""

    ran: bool = False  # False when the pass was not due, or another loop holds the lease
    result: SyncResult | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.result.changed if self.result else 0

    def describe(self) -> str:
        """The sync loop's log line, in plain words; never contains the key (the service module redacts it)."""
        if not self.ran:
            return "sync pass skipped: not due yet, or another loop holds the lease"
        result = self.result or SyncResult()
        line = (
            f"sync pass: {result.pages} page{'' if result.pages == 1 else 's'}, {result.seen} seen, "
            f"{result.changed} changed, {result.retrieved} retrieved"
        )
        if result.imported:
            line += f", {result.imported} imported"
        if result.skipped:
            line += f", {result.skipped} skipped (refused by the database)"
        line += f" in {self.seconds:.2f} s"
        if self.error:
            return f"sync pass failed after {self.seconds:.2f} s: {self.error} ({line})"
        reasons = {
            "stop": "stopped before the end",
            "budget": "stopped: the upstream budget is spent",
            "lease": "stopped: the lease expired",
        }
        return f"{line} ({reasons[result.stopped]})" if result.stopped else line

    def log_context(self) -> dict:
        """The pass's figures as fields of its log line (keys of the JSON object with BATCHBOARD_LOG_FORMAT=json)."""
        result = self.result or SyncResult()
        return {
            "outcome": "failed" if self.error else "ran" if self.ran else "skipped",
            "pages": result.pages,
            "calls": result.pages + result.retrieved,
            "seen": result.seen,
            "changed": result.changed,
            "retrieved": result.retrieved,
            "imported": result.imported,
            "skipped": result.skipped,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class LoopStatus:
    """The sync loop's health in numbers, for /metrics and /readyz."""

    heartbeat_at: datetime | None  # the loop's last sign of life (start of a pass, each page, end of a pass)
    last_pass_seconds: float | None  # duration of the last pass that ran
    lag_seconds: float | None  # how old the list is: now minus the end of the last pass whose top walk completed
    alive: bool  # the heartbeat is younger than stale_after()
    consecutive_failures: int  # list refreshes that failed in a row
    skipped_total: int = 0  # batches skipped because the database refused them, ever


def backoff_seconds(failures: int, base: float | None = None) -> float:
    base = max(settings.BATCHBOARD_REFRESH_INTERVAL if base is None else base, 1.0)
    return min(base * 2 ** min(failures, 6), MAX_BACKOFF_SECONDS) if failures else base


def stale_after() -> timedelta:
    """After this long without a heartbeat, the list says it is not being refreshed."""
    return timedelta(seconds=2 * settings.BATCHBOARD_HISTORY_INTERVAL + 60)


def error_kind(exc: services.BatchApiError) -> str:
    if isinstance(exc, services.AuthenticationFailed):
        return "auth"
    if isinstance(exc, services.BudgetExhausted):
        return "budget"
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
    elif kind == "budget":
        cause, transient = exc.message, True
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


# --- Freshness, demand and health (read by pages and /metrics) ---------------


def list_freshness(now: datetime | None = None) -> Freshness:
    """How current the cached list is: one small query, no upstream call (every page's banner uses it)."""
    now = now or timezone.now()
    state = SyncState.objects.filter(name=LIST_STATE).first()
    if state is None:
        return Freshness(ok=True, pending=True, not_refreshing=True)
    failing = state.is_failing
    return Freshness(
        ok=not failing,
        as_of=state.succeeded_at,
        error_kind=state.error_kind if failing else "",
        error_message=state.error_message if failing else "",
        consecutive_failures=state.consecutive_failures,
        pending=state.succeeded_at is None and not failing,
        not_refreshing=state.heartbeat_at is None or state.heartbeat_at < now - stale_after(),
        heartbeat_at=state.heartbeat_at,
        budget_limited=state.budget_limited,
        importing=bool(state.import_cursor) and state.import_done_at is None,
        imported=state.imported,
        import_reached=state.import_reached,
        watched_at=state.watched_at,
    )


def note_watched(freshness: Freshness, now: datetime | None = None) -> None:
    """A viewer is looking at the list: the loop refreshes at the short interval while anyone is.

    Writes only when the last note is older than WATCH_NOTE_SECONDS (read already, with the freshness), and never
    fails the page: a database too busy for this write just delays the loop's notice.
    """
    now = now or timezone.now()
    if freshness.watched_at is not None and freshness.watched_at >= now - timedelta(seconds=WATCH_NOTE_SECONDS):
        return
    try:
        SyncState.objects.note_watched(LIST_STATE, now, every=WATCH_NOTE_SECONDS)
    except OperationalError as exc:
        logger.info("Could not note a viewer of the list: %s", exc)


def loop_status(now: datetime | None = None) -> LoopStatus:
    now = now or timezone.now()
    state = SyncState.objects.filter(name=LIST_STATE).first()
    if state is None:
        return LoopStatus(None, None, None, alive=False, consecutive_failures=0, skipped_total=0)
    lag = (now - state.succeeded_at).total_seconds() if state.succeeded_at else None
    return LoopStatus(
        heartbeat_at=state.heartbeat_at,
        last_pass_seconds=state.pass_seconds,
        lag_seconds=lag,
        alive=state.heartbeat_at is not None and state.heartbeat_at >= now - stale_after(),
        consecutive_failures=state.consecutive_failures,
        skipped_total=state.skipped_total,
    )


def due_interval(state: SyncState, now: datetime) -> float:
    """Seconds between passes: the refresh interval while someone watched lately, the history interval otherwise;
    longer while the API keeps failing."""
    refresh = settings.BATCHBOARD_REFRESH_INTERVAL
    watched = state.watched_at is not None and state.watched_at >= now - timedelta(seconds=max(2 * refresh, 10))
    interval = refresh if watched else settings.BATCHBOARD_HISTORY_INTERVAL
    if state.is_failing:
        return max(interval, backoff_seconds(state.consecutive_failures, base=interval))
    return interval


# --- The loop and its passes --------------------------------------------------


def new_holder() -> str:
    """A name for one loop's leases: unique per process and thread."""
    return f"{uuid.uuid4().hex[:12]}-{threading.get_ident()}"


def run_pass(
    *,
    holder: str | None = None,
    force: bool = False,
    client: services.BatchClient | None = None,
    stop: threading.Event | None = None,
    now: datetime | None = None,
) -> PassOutcome:
    """One pass if it is due and this loop wins the lease (with `force`: whenever the lease is free), then the
    results and retries apps' steps when the API answered."""
    holder = holder or new_holder()
    now = now or timezone.now()
    state = SyncState.objects.named(LIST_STATE)
    due_before = now if force else now - timedelta(seconds=due_interval(state, now))
    if not SyncState.objects.claim_pass(LIST_STATE, holder, now, lease_seconds=LEASE_SECONDS, due_before=due_before):
        return PassOutcome()
    started = time.monotonic()
    result = SyncResult()
    error = None
    try:
        sync_batches(client or services.get_client(), result, renew=_renewer(holder), stop=stop)
    except services.BudgetExhausted:
        result.stopped = "budget"
    except services.BatchApiError as exc:
        error = exc
    except Exception as exc:
        # A bug, or a database refusing what the pass wrote outside a batch's savepoint: a failed pass like any
        # other, so that consecutive_failures rises and the alerts on it fire. The traceback goes to the log only.
        logger.exception("sync pass failed unexpectedly")
        error = services.BatchApiError(
            f"The sync pass stopped on an unexpected error ({type(exc).__name__}); the sync loop's log has the details."
        )
    finally:
        SyncState.objects.release_lease(LIST_STATE, holder)
    seconds = time.monotonic() - started
    _record_outcome(result, error, seconds)
    if error is None:  # the API answered: keep the files of batches that are final (results app)
        results_archive.sync_step()
        # Imported here: retries create batches through actions.py, which imports lookups.py, which imports this.
        from retries import auto as retries_auto

        retries_auto.sync_step()  # then submit the automatic retries of those kept (retries app)
    return PassOutcome(
        ran=True, result=result, error=f"{failure_message(error)} [{error}]" if error else "", seconds=seconds
    )


def _renewer(holder: str) -> Callable[[], bool]:
    def renew() -> bool:
        return SyncState.objects.renew_lease(LIST_STATE, holder, timezone.now(), lease_seconds=LEASE_SECONDS)

    return renew


def _record_outcome(result: SyncResult, error: services.BatchApiError | None, seconds: float) -> None:
    now = timezone.now()
    fields = {"heartbeat_at": now, "pass_seconds": seconds}
    if error is not None:
        fields.update(
            failed_at=now,
            error_kind=error_kind(error),
            error_message=failure_message(error),
            consecutive_failures=F("consecutive_failures") + 1,
        )
    elif result.complete:
        fields.update(succeeded_at=now, consecutive_failures=0, error_kind="", error_message="")
    if result.stopped == "budget":
        fields["budget_limited_at"] = now
    if result.skipped:
        fields["skipped_total"] = F("skipped_total") + result.skipped
    SyncState.objects.filter(name=LIST_STATE).update(**fields)


def sync_loop(stop: threading.Event, *, wake_every: float | None = None, quiet: bool = False) -> None:
    """Run passes until `stop` is set, waking every `wake_every` seconds (default: the refresh interval) to see
    whether one is due. Loops in several processes share the list's lease, so they never walk in the same interval.
    `quiet` logs passes that changed nothing at DEBUG.
    """
    holder = new_holder()
    wake_every = max(wake_every or settings.BATCHBOARD_REFRESH_INTERVAL, 0.05)
    pass_number = 0
    while not stop.is_set():
        pass_number += 1
        close_old_connections()
        try:
            outcome = run_pass(holder=holder, stop=stop)
        except DatabaseError as exc:
            logger.error("sync pass failed: database error: %s", exc)
        except Exception:
            logger.exception("sync pass failed unexpectedly")
        else:
            context = {"pass_number": pass_number, **outcome.log_context()}
            if outcome.error:
                logger.warning("%s", outcome.describe(), extra=context)
            elif outcome.ran:
                changed = outcome.changed or (outcome.result and (outcome.result.imported or outcome.result.stopped))
                level = logging.DEBUG if quiet and not changed else logging.INFO
                logger.log(level, "%s", outcome.describe(), extra=context)
        finally:
            close_old_connections()
        stop.wait(wake_every)


def sync_batches(
    client: services.BatchClient,
    result: SyncResult | None = None,
    *,
    renew: Callable[[], bool] = lambda: True,
    stop: threading.Event | None = None,
    page_size: int = PAGE_SIZE,
) -> SyncResult:
    """The pass's upstream work (see the module's docstring), tallied into `result` as it goes, so that a pass
    cut short by the budget still reports what it did. `renew` keeps the lease and returns False once it is lost.
    """
    result = result if result is not None else SyncResult()
    state = SyncState.objects.named(LIST_STATE)
    target, deep_ids = _walk_target(state, page_size)
    oldest_walked = _walk_top(client, state, result, renew, stop, page_size, target)
    if oldest_walked is None:
        return result
    state.refresh_from_db()
    if state.import_cursor and state.import_done_at is None:
        _import(client, state, result, renew, stop, page_size, time.monotonic() + IMPORT_SLICE_SECONDS)
        if result.stopped:
            return result
    missed = _missed_by_walk(oldest_walked, result)
    _retrieve(client, [*missed, *deep_ids][:MAX_RETRIEVES_PER_PASS], result, renew, stop)
    return result


def _walk_target(state: SyncState, page_size: int) -> tuple[int | None, list[str]]:
    """Where the top walk may stop (a creation second, Unix time), and the running batches too deep to walk to.

    The walk stops below both the high-water mark's creation and the oldest reachable running batch's; None means
    no target is known (nothing recorded yet: the walk stops after the first page and the import does the rest).
    """
    depth = Batch.objects.newest_first().values_list("created_at", flat=True)[
        MAX_WALK_PAGES * page_size : MAX_WALK_PAGES * page_size + 1
    ]
    floor = depth[0] if depth else None
    active = Batch.objects.active()
    reachable = active.filter(created_at__gte=floor) if floor else active
    oldest_active = reachable.order_by("created_at").values_list("created_at", flat=True).first()
    deep_ids = []
    if floor:
        deep = active.filter(created_at__lt=floor).order_by(F("refresh_claimed_at").asc(nulls_first=True))
        deep_ids = list(deep.values_list("batch_id", flat=True)[:MAX_RETRIEVES_PER_PASS])
    mark_created = None
    if state.high_water_id:
        mark_created = Batch.objects.filter(batch_id=state.high_water_id).values_list("created_at", flat=True).first()
    candidates = [int(t.timestamp()) for t in (mark_created, oldest_active) if t is not None]
    return (min(candidates) if candidates else None), deep_ids


def _walk_top(client, state, result, renew, stop, page_size, target) -> int | None:
    """Walk pages newest first to `target`; the oldest creation second walked, or None if cut short."""
    fresh_install = not state.high_water_id and not state.import_cursor and state.import_done_at is None
    top_id = ""
    oldest = None
    for page in client.iter_batch_pages(limit=page_size):
        top_id = top_id or (page.data[0].id if page.data else "")
        oldest = page.data[-1].created_at if page.data else oldest
        if fresh_install:
            # A fresh install shows the newest page now, as the import's first page: the background import brings
            # the rest, from here.
            _record_import_page(page, result, cursor="", reached=None)
            break
        _record_page(page.data, result)
        if not renew():
            result.stopped = "lease"
            return None
        if target is not None and oldest is not None and oldest < target:
            break
        if target is None and (not state.high_water_id or any(b.id == state.high_water_id for b in page.data)):
            break  # Nothing known to stop below (the mark's row was deleted locally): stop where the mark is met.
        if stop is not None and stop.is_set() and page.has_more:
            result.stopped = "stop"
            return None
    result.complete = True
    if top_id:
        SyncState.objects.filter(name=LIST_STATE).update(high_water_id=top_id)
    return oldest or 0


def _record_import_page(page, result: SyncResult, *, cursor: str, reached: datetime | None) -> str:
    """Record a page of the import and the import's progress after it in one transaction (so a killed worker loses
    at most this page, and no list view shows its batches without the progress); returns the new cursor."""
    with transaction.atomic():
        _record_page(page.data, result, imported=True)
        cursor = page.data[-1].id if page.data else cursor
        SyncState.objects.filter(name=LIST_STATE).update(
            import_cursor=cursor,
            imported=F("imported") + len(page.data),
            import_reached=services.from_unix(page.data[-1].created_at) if page.data else reached,
            import_done_at=None if page.has_more else timezone.now(),
        )
    return cursor


def _import(client, state, result, renew, stop, page_size, deadline) -> None:
    """Continue the history import from the saved cursor until the end of the list or the deadline.

    Each page and the cursor after it are recorded in one transaction, so a killed worker loses at most the page
    in flight and the next pass lists from the cursor again: every batch is imported once.
    """
    cursor = state.import_cursor
    while True:
        page = client.list_batches(after=cursor, limit=page_size)
        cursor = _record_import_page(page, result, cursor=cursor, reached=state.import_reached)
        result.imported += len(page.data)
        result.import_calls += 1
        if not renew():
            result.stopped = "lease"
            return
        if not page.has_more:
            return
        if stop is not None and stop.is_set():
            result.stopped = "stop"
            return
        if time.monotonic() >= deadline:
            return


def _missed_by_walk(oldest_walked: int, result: SyncResult) -> list[str]:
    """Running batches inside the range the walk covered that it did not see (gone from the list, or ties)."""
    if not oldest_walked:
        return []
    walked = Batch.objects.active().filter(created_at__gte=services.from_unix(oldest_walked))
    # Compared in Python: the set of ids seen is small (the walked pages), but may exceed SQLite's parameter limit.
    return [batch_id for batch_id in walked.values_list("batch_id", flat=True) if batch_id not in result.seen_ids]


def _retrieve(client, batch_ids: list[str], result: SyncResult, renew, stop) -> None:
    for batch_id in dict.fromkeys(batch_ids):
        if stop is not None and stop.is_set():
            result.stopped = "stop"
            return
        Batch.objects.filter(batch_id=batch_id).update(refresh_claimed_at=timezone.now())  # checked: rotate it back
        try:
            batch = client.retrieve_batch(batch_id)
        except services.NotFound:
            continue  # Deleted upstream (or another project's); keep what we knew.
        result.retrieved += 1
        digest = payload_digest(batch.raw)
        stored = Batch.objects.filter(batch_id=batch_id).values_list("payload_hash", "is_terminal").first()
        if stored is not None and stored[0] == digest:
            Batch.objects.mark_seen([batch_id], timezone.now())
        else:
            _record_changed(batch, digest, bool(stored and stored[1]), timezone.now(), result)
        if not renew():
            result.stopped = "lease"
            return


def _record_page(batches: tuple[services.ApiBatch, ...], result: SyncResult, *, imported: bool = False) -> None:
    """Record a page of the list: one query finds what is known; unchanged batches are marked seen in one UPDATE,
    new ones inserted in bulk, changed ones recorded one by one (they are few: what changed since the last pass)."""
    if not batches:
        return
    now = timezone.now()
    result.pages += 1
    result.seen += len(batches)
    result.seen_ids.update(batch.id for batch in batches)
    digests = {batch.id: payload_digest(batch.raw) for batch in batches}
    known = {
        batch_id: (digest, final)
        for batch_id, digest, final in Batch.objects.filter(batch_id__in=digests).values_list(
            "batch_id", "payload_hash", "is_terminal"
        )
    }
    unchanged, new, changed = [], [], []
    for batch in {batch.id: batch for batch in batches}.values():
        stored = known.get(batch.id)
        if stored is None:
            new.append(batch)
        elif stored[0] == digests[batch.id]:
            unchanged.append(batch.id)
        else:
            changed.append(batch)
    if unchanged:
        Batch.objects.mark_seen(unchanged, now)
    if new:
        skipped = set(record_new_batches(new, now))
        result.skipped += len(skipped)
        recorded = [batch for batch in new if batch.id not in skipped]
        result.changed += len(recorded)
        if not imported:  # Created and finished since the last pass (an import's old batches are not news).
            result.became_final += [batch.id for batch in recorded if batch.is_terminal]
    for batch in changed:
        _record_changed(batch, digests[batch.id], known[batch.id][1], now, result)


def _record_changed(batch: services.ApiBatch, digest: str, was_final: bool, now: datetime, result: SyncResult) -> None:
    row = record_batch_or_skip(batch, now)
    if row is None:
        result.skipped += 1
        return
    if row.payload_hash == digest:  # Not a late answer describing an older state.
        result.changed += 1
        if row.is_terminal and not was_final:
            result.became_final.append(batch.id)
