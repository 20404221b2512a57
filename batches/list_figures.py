"""The list's figures, shared by every viewer, scope and URL: kept per version of the data, per connection (a viewer's
are the sum over the connections they may see).

- **running(version)**: the running batches' figures per status and their spend, which move with every change. A
  sync pass that recorded something computes them (warm()) into the shared cache, so that the polls that follow it,
  in every process, read them instead of the running batches. After a change no pass made (a webhook's, a user's
  action), the first poll in each process computes them and keeps them in that process's memory: writing them to
  the database cache would cost that poll more than computing them. Those that move with the clock (stuck, expiring
  soon) are as of when they were computed, at most MAX_AGE_SECONDS before: older ones are computed again.
- **settled(...)**: the final batches' figures per status, the summary's figures of those finished today and the
  daily spend, which move only when a batch is added, becomes final or is recorded again once final
  (models.settled_version()), or leaves the running ones (their number): not with a running batch's progress, the
  usual change. Read over every final batch (tens of milliseconds at 100,000), so kept in the shared cache for every
  process; warm() computes them too when a pass changed them.

Every value is read after the version it is kept under (the caller read data_version() first), so it is never older
than its key. A value read while a batch became final may count it twice or once: then it is not kept (the next poll
has a new version).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
from django.utils import timezone

from batches.models import Batch, DailySpend, data_version, settled_version
from batches.spending import daily_rows, running_rows

MAX_AGE_SECONDS = 60
RUNNING_SECONDS = 300
# The figures of final batches are kept while nothing that changes them happens, at most this long (an admin's
# DailySpend.rebuild moves no version).
SETTLED_SECONDS = 600
# The figures this process read or computed, by key (a key never names two values): a few versions at a time.
KEPT_HERE = LocMemCache("batchboard-list-figures", {"TIMEOUT": RUNNING_SECONDS, "OPTIONS": {"MAX_ENTRIES": 50}})
FINISHED_NONE = {"finished_today": 0, "failed_today": 0, "failed_requests_today": 0}


@dataclass(frozen=True)
class Running:
    computed_at: datetime
    per_connection: dict[int, dict[str, dict[str, int]]]  # {connection id: {status: running_figures() figures}}
    spend_rows: list[dict]  # spending.running_rows(None)

    def figures(self, connection_ids: list[int] | None) -> dict[str, dict[str, int]]:
        """running_figures() of the batches of these connections (None: every one)."""
        return _summed(self.per_connection, connection_ids)

    def spend(self, connection_ids: list[int] | None) -> list[dict]:
        """spending.running_rows() of these connections (None: every one)."""
        return _of_connections(self.spend_rows, connection_ids)

    @property
    def total(self) -> int:
        """How many batches run, of every connection."""
        return sum(figures["count"] for figures in self.figures(None).values())


@dataclass(frozen=True)
class Settled:
    per_connection: dict[int, dict[str, dict[str, int]]]  # {connection id: {status: settled_figures() figures}}
    finished_today: dict[int, dict[str, int]]  # {connection id: finished_since() figures}
    daily_spend: list[dict]  # spending.daily_rows(None, today)

    def figures(self, connection_ids: list[int] | None) -> dict[str, dict[str, int]]:
        """settled_figures() of the batches of these connections (None: every one)."""
        return _summed(self.per_connection, connection_ids)

    def finished(self, connection_ids: list[int] | None) -> dict[str, int]:
        """finished_since() of the batches of these connections (None: every one)."""
        wanted = None if connection_ids is None else set(connection_ids)
        total = dict(FINISHED_NONE)
        for connection_id, figures in self.finished_today.items():
            if wanted is None or connection_id in wanted:
                for name, value in figures.items():
                    total[name] += value
        return total

    def spend(self, connection_ids: list[int] | None) -> list[dict]:
        """spending.daily_rows() of these connections (None: every one)."""
        return _of_connections(self.daily_spend, connection_ids)


def running(version: tuple) -> Running:
    """The running batches' figures as of `version`: kept, or computed now and kept in this process."""
    key = _running_key(version)
    figures = _kept(key)
    if figures is None or (timezone.now() - figures.computed_at).total_seconds() > MAX_AGE_SECONDS:
        figures = _running_now()
    KEPT_HERE.set(key, figures)
    return figures


def settled(version: tuple, running_total: int, since: datetime, today: date) -> Settled:
    """The final batches' figures as of `version`, when `running_total` batches run (of every connection), with
    those finished since `since` (the start of the viewer's day) and the spend of `today`: kept, or computed now and
    kept for every process if nothing changed them meanwhile."""
    key = _settled_key(version, running_total, since, today)
    figures = _kept(key)
    if figures is None:
        figures = _settled_now(since, today)
        if _moved_since(version, running_total):
            return figures
        cache.set(key, figures, SETTLED_SECONDS)
    KEPT_HERE.set(key, figures, SETTLED_SECONDS)
    return figures


def warm() -> None:
    """Compute the figures of the data as it is now into the shared cache, for the polls that follow in every
    process (the sync loop, after a pass that recorded something): the running ones always, the final ones when
    the pass changed them (for viewers in the default time zone)."""
    version = data_version()
    figures = _running_now()
    cache.set(_running_key(version), figures, RUNNING_SECONDS)
    settled(version, figures.total, start_of_today(), DailySpend.day_of())


def start_of_today() -> datetime:
    """Midnight of today in the current time zone (the viewer's): where "finished today" starts."""
    return timezone.make_aware(datetime.combine(timezone.localdate(), time.min))


def _kept(key: str):
    """The value this process keeps under `key`, else the shared cache's (None: neither)."""
    figures = KEPT_HERE.get(key)
    return figures if figures is not None else cache.get(key)


def _running_now() -> Running:
    now = timezone.now()
    return Running(now, Batch.objects.running_figures_per_connection(now), running_rows(None))


def _settled_now(since: datetime, today: date) -> Settled:
    return Settled(
        per_connection=Batch.objects.settled_figures_per_connection(),
        finished_today=Batch.objects.finished_since_per_connection(since),
        daily_spend=daily_rows(None, today),
    )


def _moved_since(version: tuple, running_total: int) -> bool:
    """Whether a batch was added or became final, or the running ones changed in number, since `version`."""
    moved = settled_version(data_version()) != settled_version(version)
    return moved or Batch.objects.active().count() != running_total


def _running_key(version: tuple) -> str:
    """The data's version and the settings that decide which running batches need attention."""
    attention = (settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT, settings.BATCHBOARD_EXPIRING_SOON_HOURS)
    return _key("running", version, attention)


def _settled_key(version: tuple, running_total: int, since: datetime, today: date) -> str:
    """What moves the final batches' figures (see the module's docstring), and which final batches need attention."""
    return _key(
        "settled",
        settled_version(version),
        running_total,
        since.isoformat(),
        today.isoformat(),
        settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT,
    )


def _key(name: str, *parts) -> str:
    return f"batchboard:list-{name}:" + hashlib.sha256(repr(parts).encode()).hexdigest()


def _summed(per_connection: dict[int, dict[str, dict[str, int]]], connection_ids: list[int] | None) -> dict:
    wanted = None if connection_ids is None else set(connection_ids)
    total: dict[str, dict[str, int]] = {}
    for connection_id, statuses in per_connection.items():
        if wanted is not None and connection_id not in wanted:
            continue
        for status, figures in statuses.items():
            summed = total.setdefault(status, dict.fromkeys(figures, 0))
            for name, value in figures.items():
                summed[name] += value
    return total


def _of_connections(rows: list[dict], connection_ids: list[int] | None) -> list[dict]:
    if connection_ids is None:
        return rows
    wanted = set(connection_ids)
    return [row for row in rows if row["connection_id"] in wanted]
