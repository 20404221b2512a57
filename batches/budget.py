"""The upstream budget: how many API calls per minute every process together may make, who may spend which share of
it, the per-user limits, and the shared call counters.

Counted in the database (UpstreamMinute, UserMinute), so that gunicorn workers, sync loops and `manage.py` commands
share one budget without any of them holding state in memory: each call costs one small read (is the API pausing us
after a 429?) and one conditional UPDATE (a slot in this minute's budget). The service client calls `SharedBudget`
before and after every attempt it sends (see services.get_client); nothing else needs to know.

Each minute's budget is shared by whom the calls are for (services.CallFor):
- a tenth is kept for cancels alone: nothing else may spend it, so a stop button works in the busiest minute;
- a quarter is kept for the sync loop: pages, downloads and creates cannot spend it, so the list keeps moving;
- the rest is anyone's, and cancels and the loop spend it too once their own share is used.
A caller may take a slot when what is left after it still covers the unspent shares kept for the others.

A 429's Retry-After pauses every caller. The sync loop and pages skip their turn; a call made for a person (a
download, a cancel, a create) waits out a short pause, PERSON_WAIT_SECONDS at most, and then goes.

Each connection has a budget of its own (Connection.budget_per_minute, else BATCHBOARD_UPSTREAM_BUDGET) and its own
pause: one provider's 429 never slows another. `totals()` is what /metrics reads.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum, Value
from django.db.models.functions import Greatest
from django.db.models.lookups import LessThan

from batches import services
from batches.models import Connection, UpstreamMinute, UserMinute

logger = logging.getLogger(__name__)

CallFor = services.CallFor

TOTALS_MINUTE = 0
# Minutes older than this are folded into the totals row when a new minute opens.
KEPT_MINUTES = 60
# A 429's Retry-After pauses every caller, for at most this long (the client gives up on longer waits too).
MAX_PAUSE_SECONDS = services.RETRY_AFTER_CAP
# A call made for a person waits out a pause this long at most; a longer one is refused at once, saying how long.
PERSON_WAIT_SECONDS = services.INTERACTIVE_RETRY_AFTER_CAP
# Per-user limits count per minute.
USER_WINDOW_SECONDS = 60
# One call in CANCEL_SHARE of each minute's budget is kept for cancels, one in LOOP_SHARE for the sync loop.
CANCEL_SHARE = 10
LOOP_SHARE = 4
# The callers with a share of their own, and the UpstreamMinute column that counts their calls.
SHARE_COUNTERS = {CallFor.CANCEL: "cancel_calls", CallFor.LOOP: "loop_calls"}


def clock() -> float:
    """Now, in Unix seconds: the seam tests replace to hold the minute still."""
    return time.time()


def sleep(seconds: float) -> None:
    """Wait: the seam tests replace (with a clock that moves forward instead) so that no test waits for real."""
    time.sleep(seconds)


def per_minute() -> int:
    """The budget of a connection that sets none."""
    return int(settings.BATCHBOARD_UPSTREAM_BUDGET)


def _connection(connection_id: int | None) -> int:
    """The connection whose budget is spent: the default one unless named."""
    return connection_id if connection_id is not None else Connection.objects.default().pk


def kept_for(caller: CallFor, budget: int | None = None) -> int:
    """The calls of each minute kept for this caller alone (0 for those without a share of their own)."""
    budget = per_minute() if budget is None else budget
    if caller == CallFor.CANCEL:
        return budget // CANCEL_SHARE
    if caller == CallFor.LOOP:
        return budget // LOOP_SHARE
    return 0


def take(
    now: float | None = None,
    *,
    caller: CallFor = CallFor.LOOP,
    connection_id: int | None = None,
    budget: int | None = None,
) -> None:
    """Spend one call of this minute's budget of the connection (`budget` calls a minute), or raise
    services.BudgetExhausted saying how long to wait.

    A caller working for a person waits out a pause of up to PERSON_WAIT_SECONDS first (through `sleep`).
    """
    now = clock() if now is None else now
    connection_id = _connection(connection_id)
    budget = per_minute() if budget is None else budget
    now = _wait_out_pause(now, caller, connection_id)
    minute = int(now // 60)
    if _spend(minute, caller, connection_id, budget):
        return
    # No row for this minute yet, or one another process opened since our UPDATE found none: spend again either way
    # (refusing whenever the row exists only now was a race that said "spent" at the start of a minute).
    if not UpstreamMinute.objects.filter(connection_id=connection_id, minute=minute).exists():
        _open_minute(minute, connection_id)
    if _spend(minute, caller, connection_id, budget):
        return
    raise services.BudgetExhausted(_spent_message(caller, budget), retry_after=60 - now % 60)


def _wait_out_pause(now: float, caller: CallFor, connection_id: int) -> float:
    """Now, after waiting out the API's pause if this caller may; raises BudgetExhausted if it may not."""
    waited = 0.0
    totals_row = UpstreamMinute.objects.filter(connection_id=connection_id, minute=TOTALS_MINUTE)
    while True:
        paused_until = totals_row.values_list("paused_until", flat=True).first()
        if not paused_until or paused_until <= now:
            return now
        wait = paused_until - now
        if caller not in services.PEOPLE or waited + wait > PERSON_WAIT_SECONDS:
            raise services.BudgetExhausted(
                "The OpenAI API asked batchboard to slow down; waiting as it said.",
                retry_after=wait,
                code="rate_limited",
            )
        logger.info("The API asked every caller to pause: a call for a person waits %.1f s.", wait)
        sleep(wait)
        waited += wait
        now = clock()


def _kept_for_others(caller: CallFor, budget: int) -> dict[CallFor, int]:
    """The shares of each minute kept for callers other than `caller` (those that keep any)."""
    shares = {other: kept_for(other, budget) for other in SHARE_COUNTERS if other != caller}
    return {other: kept for other, kept in shares.items() if kept}


def _spend(minute: int, caller: CallFor, connection_id: int, budget: int) -> bool:
    """Count one call in this minute's row if what is left after it still covers the shares kept for the others."""
    kept_for_others = Value(0)
    for other, kept in _kept_for_others(caller, budget).items():
        kept_for_others = kept_for_others + Greatest(Value(kept) - F(SHARE_COUNTERS[other]), Value(0))
    counts = {"calls": F("calls") + 1}
    if caller in SHARE_COUNTERS:
        counts[SHARE_COUNTERS[caller]] = F(SHARE_COUNTERS[caller]) + 1
    room = LessThan(F("calls") + kept_for_others, budget)
    return bool(UpstreamMinute.objects.filter(room, connection_id=connection_id, minute=minute).update(**counts))


def _spent_message(caller: CallFor, budget: int) -> str:
    kept = [
        f"{share} for {'cancels' if other == CallFor.CANCEL else 'the sync loop'}"
        for other, share in _kept_for_others(caller, budget).items()
    ]
    return (
        f"batchboard's budget of {budget} API calls a minute is spent"
        + (f" (kept back: {', '.join(kept)})" if kept else "")
        + "; waiting for the next minute."
    )


def _open_minute(minute: int, connection_id: int) -> None:
    """Create this minute's row, folding minutes older than KEPT_MINUTES into the totals row (one writer at a time)."""
    rows = UpstreamMinute.objects.filter(connection_id=connection_id)
    try:
        with transaction.atomic():
            UpstreamMinute.objects.get_or_create(connection_id=connection_id, minute=TOTALS_MINUTE)
            rows.select_for_update().filter(minute=TOTALS_MINUTE).first()
            old = rows.filter(minute__gt=TOTALS_MINUTE, minute__lt=minute - KEPT_MINUTES)
            folded = old.aggregate(calls=Sum("calls"), errors=Sum("errors"), rate_limited=Sum("rate_limited"))
            if folded["calls"] is not None:
                rows.filter(minute=TOTALS_MINUTE).update(**{name: F(name) + value for name, value in folded.items()})
                old.delete()
            UpstreamMinute.objects.get_or_create(connection_id=connection_id, minute=minute)
    except IntegrityError:
        pass  # Another process opened it at the same moment.


def record(
    status: int | None, retry_after: float | None, now: float | None = None, *, connection_id: int | None = None
) -> None:
    """Count the outcome of a call that was sent: an error (no answer, a redirect, HTTP >= 400), and a 429's pause."""
    if status is not None and status < 300:
        return
    now = clock() if now is None else now
    rows = UpstreamMinute.objects.filter(connection_id=_connection(connection_id))
    minute = int(now // 60)
    counts = {"errors": F("errors") + 1}
    if status == 429:
        counts["rate_limited"] = F("rate_limited") + 1
    rows.filter(minute=minute).update(**counts)
    if status == 429 and retry_after and retry_after > 0:
        pause = min(retry_after, MAX_PAUSE_SECONDS)
        rows.filter(minute=TOTALS_MINUTE).update(paused_until=Greatest(F("paused_until"), now + pause))
        rows.filter(minute=TOTALS_MINUTE, paused_until__isnull=True).update(paused_until=now + pause)
        logger.warning("The API answered 429: every caller of this connection pauses for %.1f s.", pause)


def totals() -> dict[str, int]:
    """Every upstream call counted since the database was created, by every process: calls, errors, 429s."""
    figures = UpstreamMinute.objects.aggregate(
        calls=Sum("calls"), errors=Sum("errors"), rate_limited=Sum("rate_limited")
    )
    return {name: value or 0 for name, value in figures.items()}


def totals_by_connection() -> dict[str, dict[str, int]]:
    """totals() per connection slug, in one grouped query."""
    rows = (
        UpstreamMinute.objects.order_by()
        .values("connection__slug")
        .annotate(calls=Sum("calls"), errors=Sum("errors"), rate_limited=Sum("rate_limited"))
    )
    return {
        row["connection__slug"]: {name: row[name] or 0 for name in ("calls", "errors", "rate_limited")} for row in rows
    }


def current_minute(now: float | None = None, *, connection_id: int | None = None) -> dict[str, int]:
    """This minute's calls against the connection's budget (the default connection's unless named)."""
    now = clock() if now is None else now
    connection = Connection.objects.get(pk=_connection(connection_id))
    rows = UpstreamMinute.objects.filter(connection=connection, minute=int(now // 60))
    calls = rows.values_list("calls", flat=True).first() or 0
    return {"calls": calls, "budget": connection.upstream_budget}


def allow_user(key: str, limit: int, now: float | None = None) -> bool:
    """Count one more for `key` ("upstream:user:3", "creates:alice") this minute; False once `limit` is reached.

    One conditional UPDATE (an INSERT when the minute opens), so parallel requests in any process never pass the
    limit together: a detail page of an unknown id or a download costs an upstream call, a create two or three, and
    one user must not spend the whole organisation's budget.
    """
    now = clock() if now is None else now
    minute = int(now // USER_WINDOW_SECONDS)
    if _count_user(key, minute, limit):
        return True
    if not UserMinute.objects.filter(key=key, minute=minute).exists():
        try:
            with transaction.atomic():
                UserMinute.objects.create(key=key, minute=minute)
        except IntegrityError:
            pass  # Another request of this user opened the minute at the same moment.
        else:
            UserMinute.objects.filter(minute__lt=minute - 1).delete()
    # Counted again whether this request opened the minute or found it open: another request may have opened it
    # between the first count (no row yet) and the check, and this one must still count, up to the limit.
    return _count_user(key, minute, limit)


def _count_user(key: str, minute: int, limit: int) -> bool:
    return bool(UserMinute.objects.filter(key=key, minute=minute, count__lt=limit).update(count=F("count") + 1))


class SharedBudget:
    """The service client's hook: take a slot before each attempt, count its outcome after it, wait as it says."""

    def __init__(self, caller: CallFor = CallFor.LOOP, connection_id: int | None = None, budget: int | None = None):
        self.caller = caller
        self.connection_id = connection_id
        self.budget = budget

    def before_call(self) -> None:
        take(caller=self.caller, connection_id=self.connection_id, budget=self.budget)

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        record(status, retry_after, connection_id=self.connection_id)

    def wait(self, seconds: float) -> None:
        """The client's waits between retries, through the same seam as the budget's own."""
        sleep(seconds)
