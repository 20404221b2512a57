"""The periodic checks, for events that follow time rather than a recorded change: a batch stuck in validating,
finalizing or cancelling; a running batch expiring soon; a connection's monthly budget at 80 % and 100 %.

The sync loop's process announces its housekeeping (batches.events.housekeeping, about every 30 s); the receiver
enqueues one check at most every CHECK_EVERY_SECONDS across processes (a cache key). A check costs nothing when no
subscription asks for these events; otherwise one query each for the stuck and the expiring batches (over the
indexes needs_attention uses), one for the reactions already scheduled for them, and one per connection with a
monthly budget. Each stuck or expiring batch is fanned out once, by a reaction (unique per batch, step and status),
so a batch stuck for a day is not looked at again every check.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from batches import reactions
from batches.history import STUCK_AFTER
from batches.models import Batch, Connection, Reaction
from batches.spending import EXCEEDED_PERCENT, NEAR_BUDGET, OVER_BUDGET, WARNING_PERCENT, budget_state
from notifications import fanout
from notifications.models import Subscription

logger = logging.getLogger("batches.notifications")

CHECK_EVERY_SECONDS = 60
STUCK_STEP = "notify_stuck"
EXPIRING_STEP = "notify_expiring"
CHECK_LIMIT = 500
STUCK_STATUSES = tuple(STUCK_AFTER)


def check_all(now: datetime | None = None) -> int:
    """Schedule the fan-out of every batch newly stuck or expiring soon, and notify budgets; how many were scheduled."""
    now = now or timezone.now()
    wanted = Subscription.objects.all()  # a paused destination's too: its events are held for its resumption
    scheduled = 0
    if wanted.filter(on_stuck=True).exists():
        scheduled += _schedule(STUCK_STEP, Batch.objects.stuck(now).filter(is_terminal=False))
    if wanted.filter(on_expiring=True).exists():
        scheduled += _schedule(EXPIRING_STEP, Batch.objects.expiring_soon(now))
    if wanted.filter(on_budget=True).exists():
        scheduled += check_budgets()
    return scheduled


def _attempt(step: str, status: str) -> int:
    """A stuck batch may be stuck once in each status: the reaction's attempt names the status."""
    return STUCK_STATUSES.index(status) + 1 if step == STUCK_STEP and status in STUCK_STATUSES else 0


def _schedule(step: str, batches) -> int:
    candidates = list(batches.order_by().values_list("pk", "status")[:CHECK_LIMIT])
    if not candidates:
        return 0
    done = set(
        Reaction.objects.filter(step=step, batch__in=[pk for pk, _status in candidates]).values_list("batch", "attempt")
    )
    scheduled = 0
    for pk, status in candidates:
        attempt = _attempt(step, status)
        if (pk, attempt) not in done and reactions.schedule(step, pk, attempt):
            scheduled += 1
    return scheduled


def fan_out_stuck(reaction) -> None:
    batch = reaction.batch
    if batch.status in STUCK_STATUSES and _attempt(STUCK_STEP, batch.status) == reaction.attempt:
        fanout.notify_batch(batch, [fanout.STUCK_PREFIX + batch.status])


def fan_out_expiring(reaction) -> None:
    batch = reaction.batch
    if not batch.is_terminal:
        fanout.notify_batch(batch, [fanout.EXPIRING])


def check_budgets() -> int:
    """Each connection with a monthly budget past 80 % or 100 %: one notification per mark, month and destination."""
    inserted = 0
    for connection in Connection.objects.filter(~Q(monthly_budget=None)):
        state = budget_state(connection)
        if state.level not in (NEAR_BUDGET, OVER_BUDGET):
            continue
        percent = EXCEEDED_PERCENT if state.level == OVER_BUDGET else WARNING_PERCENT
        month = timezone.localdate().strftime("%Y-%m")
        inserted += fanout.notify_connection(connection, f"{fanout.BUDGET_PREFIX}{percent}:{month}")
    return inserted
