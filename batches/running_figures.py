"""What the list shows of the running batches, computed once per change of the data for every viewer, scope and URL:
their figures per connection and status (BatchQuerySet.running_figures_per_connection) and their spend per
connection and model (spending.running_rows), kept in the shared cache under the data's version.

The first poll after a change computes them, unless the sync pass that made the change did: a pass that recorded
something calls warm(), so that the polls that follow it read the figures instead of the running batches. A viewer's
figures are the sum over the connections they may see. Those that move with the clock (stuck, expiring soon) are as
of when they were computed, at most MAX_AGE_SECONDS before: older ones are computed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from batches.models import Batch, data_version
from batches.spending import running_rows

MAX_AGE_SECONDS = 60
KEEP_SECONDS = 300


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
    kept = cache.get(key)
    if kept is not None and (timezone.now() - kept.computed_at).total_seconds() <= MAX_AGE_SECONDS:
        return kept
    return _compute(key)


def warm() -> None:
    """Compute the figures of the data as it is now, for the polls that follow (the sync loop, after a pass that
    recorded something)."""
    _compute(_key(data_version()))


def _compute(key: str) -> Running:
    now = timezone.now()
    figures = Running(now, Batch.objects.running_figures_per_connection(now), running_rows(None))
    cache.set(key, figures, KEEP_SECONDS)
    return figures


def _key(version: tuple) -> str:
    """The data's version and the settings that decide which running batches need attention."""
    parts = (version, settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT, settings.BATCHBOARD_EXPIRING_SOON_HOURS)
    return "batchboard:running-figures:" + hashlib.sha256(repr(parts).encode()).hexdigest()
