"""What the list shows of the running batches, computed once per change of the data for every viewer, scope and URL:
their figures per connection and status (BatchQuerySet.running_figures_per_connection) and their spend per
connection and model (spending.running_rows), kept in the shared cache under the data's version.

A sync pass that recorded something computes them (warm()) into the shared cache, so that the polls that follow
it, in every process, read them instead of the running batches. After a change no pass made (a webhook's, a user's
action), the first poll in each process computes them and keeps them in that process's memory: writing them to the
database cache would cost that poll more than computing them. A viewer's figures are the sum over the connections
they may see. Those that move with the clock (stuck, expiring soon) are as of when they were computed, at most
MAX_AGE_SECONDS before: older ones are computed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
from django.utils import timezone

from batches.models import Batch, data_version
from batches.spending import running_rows

MAX_AGE_SECONDS = 60
KEEP_SECONDS = 300
# The figures this process read or computed, by key (a key never names two values): a few versions at a time.
KEPT_HERE = LocMemCache("batchboard-running-figures", {"TIMEOUT": KEEP_SECONDS, "OPTIONS": {"MAX_ENTRIES": 20}})


@dataclass(frozen=True)
class Running:
    computed_at: datetime
    per_connection: dict[int, dict[str, dict[str, int]]]  # {connection id: {status: running_figures() figures}}
    spend_rows: list[dict]  # spending.running_rows(None)

    def figures(self, connection_ids: list[int] | None) -> dict[str, dict[str, int]]:
        """running_figures() of the batches of these connections (None: every one)."""
        wanted = None if connection_ids is None else set(connection_ids)
        total: dict[str, dict[str, int]] = {}
        for connection_id, statuses in self.per_connection.items():
            if wanted is not None and connection_id not in wanted:
                continue
            for status, figures in statuses.items():
                summed = total.setdefault(status, dict.fromkeys(figures, 0))
                for name, value in figures.items():
                    summed[name] += value
        return total

    def spend(self, connection_ids: list[int] | None) -> list[dict]:
        """spending.running_rows() of these connections (None: every one)."""
        if connection_ids is None:
            return self.spend_rows
        wanted = set(connection_ids)
        return [row for row in self.spend_rows if row["connection_id"] in wanted]


def running(version: tuple) -> Running:
    """The running batches' figures as of `version`, a data_version() the caller read before: kept, or computed now
    and kept (read after the version, so they are never older than their key)."""
    key = _key(version)
    figures = KEPT_HERE.get(key)
    if figures is None:
        figures = cache.get(key)
    if figures is None or (timezone.now() - figures.computed_at).total_seconds() > MAX_AGE_SECONDS:
        figures = _compute()
    KEPT_HERE.set(key, figures)
    return figures


def warm() -> None:
    """Compute the figures of the data as it is now into the shared cache, for the polls that follow in every
    process (the sync loop, after a pass that recorded something)."""
    key = _key(data_version())
    cache.set(key, _compute(), KEEP_SECONDS)


def _compute() -> Running:
    now = timezone.now()
    return Running(now, Batch.objects.running_figures_per_connection(now), running_rows(None))


def _key(version: tuple) -> str:
    """The data's version and the settings that decide which running batches need attention."""
    parts = (version, settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT, settings.BATCHBOARD_EXPIRING_SOON_HOURS)
    return "batchboard:running-figures:" + hashlib.sha256(repr(parts).encode()).hexdigest()
