"""The figures /metrics exposes, read from the database at scrape time.

Nothing is counted in process memory: every gunicorn worker answers a scrape with the same figures, whichever one
Prometheus reaches, and a restarted worker loses nothing.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import OuterRef, Subquery
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from batches import budget, freshness, reactions, services
from batches.history import STUCK_AFTER
from batches.models import Batch, BatchSnapshot


def entered_current_status() -> list[tuple[str, datetime]]:
    """(status, when it was first observed in it) for every batch that can still change."""
    first_in_status = BatchSnapshot.objects.filter(batch=OuterRef("pk"), status=OuterRef("status")).order_by(
        "observed_at"
    )
    rows = Batch.objects.active().annotate(entered_at=Subquery(first_in_status.values("observed_at")[:1]))
    return [
        (status, entered or first_seen)
        for status, entered, first_seen in rows.values_list("status", "entered_at", "first_seen_at")
    ]


class DashboardCollector:
    """A prometheus_client collector over the cache and the sync's bookkeeping."""

    def collect(self):
        now = timezone.now()
        counts = Batch.objects.status_counts()
        batches = GaugeMetricFamily("batchboard_batches", "Batches in the cache, by status.", labels=["status"])
        for status in services.RECORDED_STATUSES:
            batches.add_metric([status], counts.get(status, 0))
        yield batches

        in_flight = Batch.objects.summary(since=now)["requests_in_flight"]
        yield GaugeMetricFamily(
            "batchboard_requests_in_flight", "Requests of running batches not processed yet.", value=in_flight
        )

        oldest: dict[str, float] = {}
        stuck = dict.fromkeys(STUCK_AFTER, 0)
        for status, entered_at in entered_current_status():
            age = max((now - entered_at).total_seconds(), 0.0)
            oldest[status] = max(oldest.get(status, 0.0), age)
            if status in STUCK_AFTER and age > STUCK_AFTER[status].total_seconds():
                stuck[status] += 1
        ages = GaugeMetricFamily(
            "batchboard_oldest_batch_in_status_seconds",
            "How long the batch longest in each status that can still change has been in it (first observed).",
            labels=["status"],
        )
        for status in sorted(oldest):
            ages.add_metric([status], oldest[status])
        yield ages
        stuck_family = GaugeMetricFamily(
            "batchboard_batches_stuck",
            "Batches in a status for longer than the detail page's warning threshold for it.",
            labels=["status"],
        )
        for status, count in stuck.items():
            stuck_family.add_metric([status], count)
        yield stuck_family

        yield from _sync_figures(freshness.loop_status(now))
        yield from _queue_figures(reactions.queue_status(now))
        yield from _upstream_figures(budget.totals())


def _sync_figures(loop: freshness.LoopStatus):
    if loop.lag_seconds is not None:
        yield GaugeMetricFamily(
            "batchboard_sync_lag_seconds",
            "Seconds since the end of the last pass that brought the whole list up to date.",
            value=max(loop.lag_seconds, 0.0),
        )
    if loop.last_pass_seconds is not None:
        yield GaugeMetricFamily(
            "batchboard_sync_last_pass_seconds", "How long the last sync pass took.", value=loop.last_pass_seconds
        )
    yield GaugeMetricFamily(
        "batchboard_sync_alive", "1 while the sync loop's heartbeat is recent.", value=int(loop.alive)
    )
    yield GaugeMetricFamily(
        "batchboard_sync_consecutive_failures",
        "List refreshes that failed in a row (0 while the API answers).",
        value=loop.consecutive_failures,
    )
    skipped = CounterMetricFamily(
        "batchboard_sync_skipped",
        "Batches the sync loop skipped because the database refused to record them (each one is logged).",
    )
    skipped.add_metric([], loop.skipped_total)
    yield skipped


def _queue_figures(queue: reactions.QueueStatus):
    yield GaugeMetricFamily("batchboard_tasks_waiting", "Background tasks due and not started.", value=queue.waiting)
    yield GaugeMetricFamily(
        "batchboard_tasks_oldest_waiting_seconds",
        "How long the background task due longest has waited for a worker (0 when none waits).",
        value=queue.oldest_waiting_seconds,
    )
    yield GaugeMetricFamily(
        "batchboard_tasks_failed_last_hour",
        "Background tasks that crashed, and reactions that gave up after their retries, in the last hour.",
        value=queue.failed_last_hour,
    )


def _upstream_figures(totals: dict[str, int]):
    """The upstream budget's shared counters (batches/budget.py): every call any process sent, its errors, its 429s."""
    for name, help_text in (
        ("calls", "Calls sent to the OpenAI API by every process."),
        ("errors", "Calls that got no answer or an HTTP error."),
        ("rate_limited", "Calls the API answered with 429."),
    ):
        family = CounterMetricFamily(f"batchboard_upstream_{name}", help_text)
        family.add_metric([], totals[name])
        yield family


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DashboardCollector())
    return generate_latest(registry)
