"""Keeping the cache in step with the API: the sync loop and its passes (how fresh the list is: batches.freshness).

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
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from batches import events, list_figures, reactions, services

# LIST_STATE: the default connection's state row, named here for callers of the loop.
from batches.freshness import LIST_STATE as LIST_STATE
from batches.freshness import backoff_seconds, error_kind, failure_message
from batches.models import Batch, Connection, Recorded, SyncState, record_batches

logger = logging.getLogger(__name__)

PAGE_SIZE = services.LIST_LIMIT_MAX
# A running batch further down the cache than this many pages is retrieved on its own rather than walked to.
MAX_WALK_PAGES = 10
MAX_RETRIEVES_PER_PASS = 20
# One pass imports for at most this long, so that the top of the list keeps being refreshed during a long import.
IMPORT_SLICE_SECONDS = 60.0
# The loop's lease: renewed after every upstream call, so only a dead loop's lease expires.
LEASE_SECONDS = 60.0


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

    @property
    def recorded(self) -> bool:
        """Whether the pass recorded something: a change, or batches imported."""
        return self.ran and bool(self.changed or (self.result and self.result.imported))

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
    connection: Connection | None = None,
) -> PassOutcome:
    """One pass over one connection (the default one when None) if it is due and this loop wins its lease (with
    `force`: whenever the lease is free). A pass only lists and records: what follows a recorded state runs as
    reactions, on task workers (batches.reactions). Each connection has its own lease, state and budget."""
    holder = holder or new_holder()
    now = now or timezone.now()
    connection = connection or Connection.objects.default()
    name = connection.list_state
    state = SyncState.objects.named(name)
    due_before = now if force else now - timedelta(seconds=due_interval(state, now))
    if not SyncState.objects.claim_pass(name, holder, now, lease_seconds=LEASE_SECONDS, due_before=due_before):
        return PassOutcome()
    started = time.monotonic()
    result = SyncResult()
    error = None
    try:
        client = client or services.get_client(connection=connection)
        sync_batches(client, result, renew=_renewer(holder, name), stop=stop, connection=connection)
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
        SyncState.objects.release_lease(name, holder)
    seconds = time.monotonic() - started
    _record_outcome(result, error, seconds, name)
    return PassOutcome(
        ran=True, result=result, error=f"{failure_message(error)} [{error}]" if error else "", seconds=seconds
    )


def _renewer(holder: str, name: str) -> Callable[[], bool]:
    def renew() -> bool:
        return SyncState.objects.renew_lease(name, holder, timezone.now(), lease_seconds=LEASE_SECONDS)

    return renew


def _record_outcome(result: SyncResult, error: services.BatchApiError | None, seconds: float, name: str) -> None:
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
    SyncState.objects.filter(name=name).update(**fields)


def sync_loop(stop: threading.Event, *, wake_every: float | None = None, quiet: bool = False) -> None:
    """Run passes until `stop` is set, waking every `wake_every` seconds (default: the refresh interval) to see
    whether one is due. Loops in several processes share the list's lease, so they never walk in the same interval.
    `quiet` logs passes that changed nothing at DEBUG.
    """
    holder = new_holder()
    wake_every = max(wake_every or settings.BATCHBOARD_REFRESH_INTERVAL, 0.05)
    pass_number = 0
    swept_at = 0.0
    while not stop.is_set():
        pass_number += 1
        close_old_connections()
        try:
            Connection.objects.default()  # the single-key settings' connection, also in a database just emptied
            connections = list(Connection.objects.syncing())
        except DatabaseError as exc:
            logger.error("sync pass failed: database error: %s", exc)
            connections = []
        changed = False
        for connection in connections:
            if stop.is_set():
                break
            changed = _pass_over(connection, holder, stop, pass_number, quiet) or changed
        if changed:
            _warm_list_figures()
        try:
            if time.monotonic() - swept_at >= reactions.SWEEP_EVERY_SECONDS:
                swept_at = time.monotonic()
                reactions.sweep()  # housekeeping, not a reaction: see batches.reactions
                events.housekeeping.send_robust(sender=None)
        except DatabaseError as exc:
            logger.error("sweeping reactions failed: database error: %s", exc)
        finally:
            close_old_connections()
        stop.wait(wake_every)


def _warm_list_figures() -> None:
    """The list's figures for the polls that follow a pass that changed them (batches.list_figures): they read them
    instead of the batches. A failure only leaves that to the first poll."""
    try:
        list_figures.warm()
    except Exception:
        logger.exception("keeping the list's figures failed; the next poll computes them")


def _pass_over(connection: Connection, holder: str, stop: threading.Event, pass_number: int, quiet: bool) -> bool:
    """One connection's turn in the loop: a pass if due, logged; one connection's failure never stops the others.
    True when the pass recorded a change."""
    try:
        outcome = run_pass(holder=holder, stop=stop, connection=connection)
    except DatabaseError as exc:
        logger.error("sync pass of %s failed: database error: %s", connection.slug, exc)
    except Exception:
        logger.exception("sync pass of %s failed unexpectedly", connection.slug)
    else:
        context = {"pass_number": pass_number, "connection": connection.slug, **outcome.log_context()}
        if outcome.error:
            logger.warning("%s [%s]", outcome.describe(), connection.slug, extra=context)
        elif outcome.ran:
            worth_telling = outcome.recorded or (outcome.result and outcome.result.stopped)
            level = logging.DEBUG if quiet and not worth_telling else logging.INFO
            logger.log(level, "%s [%s]", outcome.describe(), connection.slug, extra=context)
        return outcome.recorded
    return False


def sync_batches(
    client: services.BatchClient,
    result: SyncResult | None = None,
    *,
    renew: Callable[[], bool] = lambda: True,
    stop: threading.Event | None = None,
    page_size: int = PAGE_SIZE,
    connection: Connection | None = None,
) -> SyncResult:
    """The pass's upstream work over one connection (see the module's docstring), tallied into `result` as it goes,
    so that a pass cut short by the budget still reports what it did. `renew` keeps the lease and returns False once
    it is lost.
    """
    result = result if result is not None else SyncResult()
    walk = _Walk(connection or Connection.objects.default(), client, result, renew, stop, page_size)
    state = SyncState.objects.named(walk.state_name)
    target, deep_ids = _walk_target(walk, state)
    oldest_walked = _walk_top(walk, state, target)
    if oldest_walked is None:
        return result
    state.refresh_from_db()
    if state.import_cursor and state.import_done_at is None:
        _import(walk, state, time.monotonic() + IMPORT_SLICE_SECONDS)
        if result.stopped:
            return result
    missed = _missed_by_walk(walk, oldest_walked)
    _retrieve(walk, [*missed, *deep_ids][:MAX_RETRIEVES_PER_PASS])
    return result


@dataclass
class _Walk:
    """What one pass works with: its connection, client, tally, lease and stop signal."""

    connection: Connection
    client: services.BatchClient
    result: SyncResult
    renew: Callable[[], bool]
    stop: threading.Event | None
    page_size: int

    @property
    def state_name(self) -> str:
        return self.connection.list_state

    @property
    def batches(self):
        return Batch.objects.filter(connection=self.connection)

    def record(self, batches, *, historical: bool) -> Recorded:
        return record_batches(batches, timezone.now(), historical=historical, connection=self.connection)


def _walk_target(walk: _Walk, state: SyncState) -> tuple[int | None, list[str]]:
    """Where the top walk may stop (a creation second, Unix time), and the running batches too deep to walk to.

    The walk stops below both the high-water mark's creation and the oldest reachable running batch's; None means
    no target is known (nothing recorded yet: the walk stops after the first page and the import does the rest).
    """
    page_size = walk.page_size
    depth = walk.batches.newest_first().values_list("created_at", flat=True)[
        MAX_WALK_PAGES * page_size : MAX_WALK_PAGES * page_size + 1
    ]
    floor = depth[0] if depth else None
    active = walk.batches.active()
    reachable = active.filter(created_at__gte=floor) if floor else active
    oldest_active = reachable.order_by("created_at").values_list("created_at", flat=True).first()
    deep_ids = []
    if floor:
        deep = active.filter(created_at__lt=floor).order_by(F("refresh_claimed_at").asc(nulls_first=True))
        deep_ids = list(deep.values_list("batch_id", flat=True)[:MAX_RETRIEVES_PER_PASS])
    mark_created = None
    if state.high_water_id:
        mark_created = walk.batches.filter(batch_id=state.high_water_id).values_list("created_at", flat=True).first()
    candidates = [int(t.timestamp()) for t in (mark_created, oldest_active) if t is not None]
    return (min(candidates) if candidates else None), deep_ids


def _walk_top(walk: _Walk, state: SyncState, target: int | None) -> int | None:
    """Walk pages newest first to `target`; the oldest creation second walked, or None if cut short."""
    result, stop = walk.result, walk.stop
    fresh_install = not state.high_water_id and not state.import_cursor and state.import_done_at is None
    top_id = ""
    oldest = None
    for page in walk.client.iter_batch_pages(limit=walk.page_size):
        top_id = top_id or (page.data[0].id if page.data else "")
        oldest = page.data[-1].created_at if page.data else oldest
        if fresh_install:
            # A fresh install shows the newest page now, as the import's first page: the background import brings
            # the rest, from here.
            _record_import_page(walk, page, cursor="", reached=None)
            break
        _record_page(walk, page.data)
        if not walk.renew():
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
        SyncState.objects.filter(name=walk.state_name).update(high_water_id=top_id)
    return oldest or 0


def _record_import_page(walk: _Walk, page, *, cursor: str, reached: datetime | None) -> str:
    """Record a page of the import and the import's progress after it in one transaction (so a killed worker loses
    at most this page, and no list view shows its batches without the progress); returns the new cursor."""
    with transaction.atomic():
        _record_page(walk, page.data, imported=True)
        cursor = page.data[-1].id if page.data else cursor
        SyncState.objects.filter(name=walk.state_name).update(
            import_cursor=cursor,
            imported=F("imported") + len(page.data),
            import_reached=services.from_unix(page.data[-1].created_at) if page.data else reached,
            import_done_at=None if page.has_more else timezone.now(),
        )
    return cursor


def _import(walk: _Walk, state: SyncState, deadline: float) -> None:
    """Continue the history import from the saved cursor until the end of the list or the deadline.

    Each page and the cursor after it are recorded in one transaction, so a killed worker loses at most the page
    in flight and the next pass lists from the cursor again: every batch is imported once.
    """
    result, stop = walk.result, walk.stop
    cursor = state.import_cursor
    while True:
        page = walk.client.list_batches(after=cursor, limit=walk.page_size)
        cursor = _record_import_page(walk, page, cursor=cursor, reached=state.import_reached)
        result.imported += len(page.data)
        result.import_calls += 1
        if not walk.renew():
            result.stopped = "lease"
            return
        if not page.has_more:
            return
        if stop is not None and stop.is_set():
            result.stopped = "stop"
            return
        if time.monotonic() >= deadline:
            return


def _missed_by_walk(walk: _Walk, oldest_walked: int) -> list[str]:
    """Running batches inside the range the walk covered that it did not see (gone from the list, or ties)."""
    if not oldest_walked:
        return []
    walked = walk.batches.active().filter(created_at__gte=services.from_unix(oldest_walked))
    # Compared in Python: the set of ids seen is small (the walked pages), but may exceed SQLite's parameter limit.
    seen = walk.result.seen_ids
    return [batch_id for batch_id in walked.values_list("batch_id", flat=True) if batch_id not in seen]


def _retrieve(walk: _Walk, batch_ids: list[str]) -> None:
    result, stop = walk.result, walk.stop
    for batch_id in dict.fromkeys(batch_ids):
        if stop is not None and stop.is_set():
            result.stopped = "stop"
            return
        walk.batches.filter(batch_id=batch_id).update(refresh_claimed_at=timezone.now())  # checked: rotate it back
        try:
            batch = walk.client.retrieve_batch(batch_id)
        except services.NotFound:
            continue  # Deleted upstream (or another project's); keep what we knew.
        result.retrieved += 1
        _tally(walk.record([batch], historical=False), result, imported=False)
        if not walk.renew():
            result.stopped = "lease"
            return


def _record_page(walk: _Walk, batches: tuple[services.ApiBatch, ...], *, imported: bool = False) -> None:
    """Record a page of the list through the one recording function, and tally it into the pass's result."""
    if not batches:
        return
    result = walk.result
    result.pages += 1
    result.seen += len(batches)
    result.seen_ids.update(batch.id for batch in batches)
    _tally(walk.record(batches, historical=imported), result, imported=imported)


def _tally(recorded: Recorded, result: SyncResult, *, imported: bool) -> None:
    result.changed += len(recorded.changed)
    result.skipped += len(recorded.skipped)
    if not imported:  # An import's old batches are not news.
        result.became_final += recorded.became_final
