"""The upstream budget: how many API calls per minute every process together may make, and the shared call counters.

Counted in the database (UpstreamMinute), so that gunicorn workers, sync loops and `manage.py` commands share one
budget without any of them holding state in memory: each call costs one small read (is the API pausing us after a
429?) and one conditional UPDATE (a slot in this minute's budget). The service client calls `SharedBudget` before
and after every attempt it sends (see services.get_client); nothing else needs to know.

`totals()` is what /metrics reads.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.db.models.functions import Greatest

from batches import services
from batches.models import UpstreamMinute

logger = logging.getLogger(__name__)

TOTALS_MINUTE = 0
# Minutes older than this are folded into the totals row when a new minute opens.
KEPT_MINUTES = 60
# A 429's Retry-After pauses every caller, for at most this long (the client gives up on longer waits too).
MAX_PAUSE_SECONDS = services.RETRY_AFTER_CAP
# A per-user limit counts requests that may call upstream, per minute, in the configured (shared) cache.
USER_WINDOW_SECONDS = 60
# One call in this many of each minute's budget is left to what users do (cancel, create, retry): the sync loop and
# pages stop short of it, so that a minute they keep busy never refuses a cancel.
ACTION_SHARE = 10


def clock() -> float:
    """Now, in Unix seconds: the seam tests replace to hold the minute still."""
    return time.time()


def per_minute() -> int:
    return int(settings.BATCHBOARD_UPSTREAM_BUDGET)


def limit(*, for_action: bool = False) -> int:
    """The calls a minute a caller may spend: users' actions the whole budget, everything else all but their share."""
    return per_minute() if for_action else per_minute() - per_minute() // ACTION_SHARE


def take(now: float | None = None, *, for_action: bool = False) -> None:
    """Spend one call of this minute's budget, or raise services.BudgetExhausted saying how long to wait."""
    now = clock() if now is None else now
    calls = limit(for_action=for_action)
    minute = int(now // 60)
    paused_until = UpstreamMinute.objects.filter(minute=TOTALS_MINUTE).values_list("paused_until", flat=True).first()
    if paused_until and paused_until > now:
        raise services.BudgetExhausted(
            "The OpenAI API asked batchboard to slow down; waiting as it said.",
            retry_after=paused_until - now,
            code="rate_limited",
        )
    if _spend(minute, calls):
        return
    if not UpstreamMinute.objects.filter(minute=minute).exists():
        _open_minute(minute)
        if _spend(minute, calls):
            return
    kept = per_minute() - calls
    raise services.BudgetExhausted(
        f"batchboard's budget of {per_minute()} API calls a minute is spent"
        + (f" (the last {kept} are kept for cancels and creates)" if kept else "")
        + "; waiting for the next minute.",
        retry_after=60 - now % 60,
    )


def _spend(minute: int, calls: int) -> bool:
    return bool(UpstreamMinute.objects.filter(minute=minute, calls__lt=calls).update(calls=F("calls") + 1))


def _open_minute(minute: int) -> None:
    """Create this minute's row, folding minutes older than KEPT_MINUTES into the totals row (one writer at a time)."""
    try:
        with transaction.atomic():
            UpstreamMinute.objects.get_or_create(minute=TOTALS_MINUTE)
            UpstreamMinute.objects.select_for_update().filter(minute=TOTALS_MINUTE).first()
            old = UpstreamMinute.objects.filter(minute__gt=TOTALS_MINUTE, minute__lt=minute - KEPT_MINUTES)
            folded = old.aggregate(calls=Sum("calls"), errors=Sum("errors"), rate_limited=Sum("rate_limited"))
            if folded["calls"] is not None:
                UpstreamMinute.objects.filter(minute=TOTALS_MINUTE).update(
                    **{name: F(name) + value for name, value in folded.items()}
                )
                old.delete()
            UpstreamMinute.objects.get_or_create(minute=minute)
    except IntegrityError:
        pass  # Another process opened it at the same moment.


def record(status: int | None, retry_after: float | None, now: float | None = None) -> None:
    """Count the outcome of a call that was sent: an error (no answer, or HTTP >= 400), and a 429's pause."""
    if status is not None and status < 400:
        return
    now = clock() if now is None else now
    minute = int(now // 60)
    counts = {"errors": F("errors") + 1}
    if status == 429:
        counts["rate_limited"] = F("rate_limited") + 1
    UpstreamMinute.objects.filter(minute=minute).update(**counts)
    if status == 429 and retry_after and retry_after > 0:
        pause = min(retry_after, MAX_PAUSE_SECONDS)
        UpstreamMinute.objects.filter(minute=TOTALS_MINUTE).update(
            paused_until=Greatest(F("paused_until"), now + pause)
        )
        UpstreamMinute.objects.filter(minute=TOTALS_MINUTE, paused_until__isnull=True).update(paused_until=now + pause)
        logger.warning("The API answered 429: every caller pauses for %.1f s.", pause)


def totals() -> dict[str, int]:
    """Every upstream call counted since the database was created, by every process: calls, errors, 429s."""
    figures = UpstreamMinute.objects.aggregate(
        calls=Sum("calls"), errors=Sum("errors"), rate_limited=Sum("rate_limited")
    )
    return {name: value or 0 for name, value in figures.items()}


def current_minute(now: float | None = None) -> dict[str, int]:
    """This minute's calls against the budget."""
    now = clock() if now is None else now
    calls = UpstreamMinute.objects.filter(minute=int(now // 60)).values_list("calls", flat=True).first() or 0
    return {"calls": calls, "budget": per_minute()}


def allow_user(user_key: str, now: float | None = None) -> bool:
    """True while this user's requests that may call upstream stay within their per-minute limit.

    In the configured cache (Redis in production, so every worker shares it): a detail page of an unknown id or a
    download costs an upstream call, and one user must not spend the whole organisation's budget.
    """
    now = clock() if now is None else now
    key = f"batchboard:user-calls:{user_key}:{int(now // USER_WINDOW_SECONDS)}"
    cache.add(key, 0, USER_WINDOW_SECONDS * 2)
    try:
        count = cache.incr(key)
    except ValueError:  # Expired between add and incr.
        cache.set(key, 1, USER_WINDOW_SECONDS * 2)
        count = 1
    return count <= settings.BATCHBOARD_USER_UPSTREAM_PER_MINUTE


class SharedBudget:
    """The service client's hook: take a slot before each attempt, count its outcome after it."""

    def __init__(self, *, for_action: bool = False):
        self.for_action = for_action

    def before_call(self) -> None:
        take(for_action=self.for_action)

    def after_call(self, status: int | None, retry_after: float | None) -> None:
        record(status, retry_after)
