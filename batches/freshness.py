"""How current the cached list is, and upstream failures in words a user understands: what every page's banner,
/metrics and /readyz read, and the one place failures are worded. Read by pages, lookups and actions, which never
import the sync loop (batches.sync) that writes what this reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from batches import services
from batches.models import SyncState

logger = logging.getLogger("batches.sync")

# The sync loop's row of SyncState (its lease, heartbeat, import progress, last outcome).
LIST_STATE = "list"
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
    # The SyncState rows (one per connection) this freshness speaks for.
    states: tuple[str, ...] = field(default=(), compare=False)

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


def list_freshness(now: datetime | None = None, *, states: list[str] | None = None) -> Freshness:
    """How current the cached list is: one small query, no upstream call (every page's banner uses it).

    Over the sync states named (one per connection: Connection.list_state; the default connection's when None): the
    least current of them speaks for all, prefixed with the connection's name when there are several.
    """
    now = now or timezone.now()
    names = states or [LIST_STATE]
    rows = {state.name: state for state in SyncState.objects.filter(name__in=names)}
    found = [rows[name] for name in names if name in rows]
    if not found:
        return Freshness(ok=True, pending=True, not_refreshing=True)
    each = [_freshness_of(state, now) for state in found]
    if len(each) == 1:
        return each[0]
    failing = [(state, fresh) for state, fresh in zip(found, each, strict=True) if not fresh.ok]
    worst_state, worst = failing[0] if failing else (found[0], each[0])
    label = worst_state.name.partition(":")[2] or "default"
    known = [fresh.as_of for fresh in each if fresh.as_of]
    watched = [fresh.watched_at for fresh in each]
    return Freshness(
        ok=not failing,
        as_of=min(known) if known else None,
        error_kind=worst.error_kind,
        error_message=f"{label}: {worst.error_message}" if worst.error_message else "",
        consecutive_failures=max(fresh.consecutive_failures for fresh in each),
        pending=any(fresh.pending for fresh in each),
        not_refreshing=any(fresh.not_refreshing for fresh in each),
        heartbeat_at=min((fresh.heartbeat_at for fresh in each if fresh.heartbeat_at), default=None),
        budget_limited=any(fresh.budget_limited for fresh in each),
        importing=any(fresh.importing for fresh in each),
        imported=sum(fresh.imported for fresh in each),
        import_reached=max((fresh.import_reached for fresh in each if fresh.import_reached), default=None),
        watched_at=None if None in watched else min(watched),
        states=tuple(names),
    )


def _freshness_of(state: SyncState, now: datetime) -> Freshness:
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
        states=(state.name,),
    )


def note_watched(freshness: Freshness, now: datetime | None = None) -> None:
    """A viewer is looking at the list: the loops of the connections shown refresh at the short interval while
    anyone is.

    Writes only when the last note is older than WATCH_NOTE_SECONDS (read already, with the freshness), and never
    fails the page: a database too busy for this write just delays the loop's notice.
    """
    now = now or timezone.now()
    if freshness.watched_at is not None and freshness.watched_at >= now - timedelta(seconds=WATCH_NOTE_SECONDS):
        return
    try:
        for name in freshness.states or (LIST_STATE,):
            SyncState.objects.note_watched(name, now, every=WATCH_NOTE_SECONDS)
    except OperationalError as exc:
        logger.info("Could not note a viewer of the list: %s", exc)


def loop_status(now: datetime | None = None, *, state_name: str = LIST_STATE) -> LoopStatus:
    """One connection's loop (the default one's unless named)."""
    now = now or timezone.now()
    return _loop_status_of(SyncState.objects.filter(name=state_name).first(), now)


def loop_statuses(state_names: list[str], now: datetime | None = None) -> dict[str, LoopStatus]:
    """loop_status() of each of these loops, in one query (/metrics, one per connection)."""
    now = now or timezone.now()
    states = {state.name: state for state in SyncState.objects.filter(name__in=state_names)}
    return {name: _loop_status_of(states.get(name), now) for name in state_names}


def _loop_status_of(state: SyncState | None, now: datetime) -> LoopStatus:
    if state is None:
        return LoopStatus(None, None, None, alive=False, consecutive_failures=0)
    lag = (now - state.succeeded_at).total_seconds() if state.succeeded_at else None
    return LoopStatus(
        heartbeat_at=state.heartbeat_at,
        last_pass_seconds=state.pass_seconds,
        lag_seconds=lag,
        alive=state.heartbeat_at is not None and state.heartbeat_at >= now - stale_after(),
        consecutive_failures=state.consecutive_failures,
        skipped_total=state.skipped_total,
    )
