"""The figures /metrics exposes, read from the database at scrape time.

Nothing is counted in process memory: every gunicorn worker answers a scrape with the same figures, whichever one
Prometheus reaches, and a restarted worker loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from django.db.models import Count, F, OuterRef, Subquery, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from batches import budget, freshness, reactions, services
from batches.history import STUCK_AFTER
from batches.models import Batch, BatchSnapshot, Connection

# Figures of the apps built on this one (which it may not import): each a function of {connection id: slug}, in slug
# order, yielding metric families labelled by connection, registered from its app's ready().
_REGISTERED: list[Callable[[dict[int, str]], Iterable]] = []


def register(figures: Callable[[dict[int, str]], Iterable]) -> None:
    if figures not in _REGISTERED:
        _REGISTERED.append(figures)


def entered_current_status() -> list[tuple[int, str, datetime]]:
    """(connection id, status, when it was first observed in it) for every batch that can still change."""
    first_in_status = BatchSnapshot.objects.filter(batch=OuterRef("pk"), status=OuterRef("status")).order_by(
        "observed_at"
    )
    rows = Batch.objects.active().annotate(entered_at=Subquery(first_in_status.values("observed_at")[:1]))
    return [
        (connection_id, status, entered or first_seen)
        for connection_id, status, entered, first_seen in rows.values_list(
            "connection_id", "status", "entered_at", "first_seen_at"
        )
    ]


def _status_counts_per_connection() -> dict[tuple[int, str], int]:
    """{(connection id, status): batches}, in one grouped query."""
    rows = Batch.objects.order_by().values_list("connection_id", "status").annotate(count=Count("id"))
    return {(connection_id, status): count for connection_id, status, count in rows}


def _in_flight_per_connection() -> dict[int, int]:
    """{connection id: requests of its running batches not processed yet}, in one grouped query."""
    unfinished = F("total_requests") - F("completed_requests") - F("failed_requests")
    rows = Batch.objects.active().order_by().values_list("connection_id").annotate(in_flight=Sum(unfinished))
    return {connection_id: max(in_flight or 0, 0) for connection_id, in_flight in rows}


class DashboardCollector:
    """A prometheus_client collector over the cache and the sync's bookkeeping. Every figure of batches, of the
    sync and of upstream calls has a `connection` label (its slug); the task queue is shared by every connection.
    The queries do not grow with the number of connections or batches."""

    def collect(self):
        now = timezone.now()
        connections = list(Connection.objects.order_by("slug"))
        slugs = {connection.pk: connection.slug for connection in connections}
        counts = _status_counts_per_connection()
        batches = GaugeMetricFamily(
            "batchboard_batches", "Batches in the cache, by connection and status.", labels=["connection", "status"]
        )
        for connection in connections:
            for status in services.RECORDED_STATUSES:
                batches.add_metric([connection.slug, status], counts.get((connection.pk, status), 0))
        yield batches

        in_flight = _in_flight_per_connection()
        in_flight_family = GaugeMetricFamily(
            "batchboard_requests_in_flight", "Requests of running batches not processed yet.", labels=["connection"]
        )
        for connection in connections:
            in_flight_family.add_metric([connection.slug], in_flight.get(connection.pk, 0))
        yield in_flight_family

        oldest: dict[tuple[str, str], float] = {}
        stuck = {(connection.slug, status): 0 for connection in connections for status in STUCK_AFTER}
        for connection_id, status, entered_at in entered_current_status():
            key = (slugs.get(connection_id, ""), status)
            age = max((now - entered_at).total_seconds(), 0.0)
            oldest[key] = max(oldest.get(key, 0.0), age)
            if status in STUCK_AFTER and age > STUCK_AFTER[status].total_seconds():
                stuck[key] = stuck.get(key, 0) + 1
        ages = GaugeMetricFamily(
            "batchboard_oldest_batch_in_status_seconds",
            "How long the batch longest in each status that can still change has been in it (first observed).",
            labels=["connection", "status"],
        )
        for key in sorted(oldest):
            ages.add_metric(list(key), oldest[key])
        yield ages
        stuck_family = GaugeMetricFamily(
            "batchboard_batches_stuck",
            "Batches in a status for longer than the detail page's warning threshold for it.",
            labels=["connection", "status"],
        )
        for key, count in stuck.items():
            stuck_family.add_metric(list(key), count)
        yield stuck_family

        syncing = [connection for connection in connections if connection.configured and not connection.paused]
        loops = freshness.loop_statuses([connection.list_state for connection in syncing], now)
        yield from _sync_figures([(connection.slug, loops[connection.list_state]) for connection in syncing])
        yield from _queue_figures(reactions.queue_status(now))
        yield from _upstream_figures([connection.slug for connection in connections], budget.totals_by_connection())
        for figures in _REGISTERED:
            yield from figures(slugs)


def _sync_figures(loops: list[tuple[str, freshness.LoopStatus]]):
    """Each syncing connection's loop (a paused one has none, so that it raises no alert)."""
    lag = GaugeMetricFamily(
        "batchboard_sync_lag_seconds",
        "Seconds since the end of the last pass that brought the whole list up to date.",
        labels=["connection"],
    )
    last_pass = GaugeMetricFamily(
        "batchboard_sync_last_pass_seconds", "How long the last sync pass took.", labels=["connection"]
    )
    alive = GaugeMetricFamily(
        "batchboard_sync_alive", "1 while the sync loop's heartbeat is recent.", labels=["connection"]
    )
    failures = GaugeMetricFamily(
        "batchboard_sync_consecutive_failures",
        "List refreshes that failed in a row (0 while the API answers).",
        labels=["connection"],
    )
    skipped = CounterMetricFamily(
        "batchboard_sync_skipped",
        "Batches the sync loop skipped because the database refused to record them (each one is logged).",
        labels=["connection"],
    )
    for slug, loop in loops:
        if loop.lag_seconds is not None:
            lag.add_metric([slug], max(loop.lag_seconds, 0.0))
        if loop.last_pass_seconds is not None:
            last_pass.add_metric([slug], loop.last_pass_seconds)
        alive.add_metric([slug], int(loop.alive))
        failures.add_metric([slug], loop.consecutive_failures)
        skipped.add_metric([slug], loop.skipped_total)
    # A family without samples is not exposed: absent(batchboard_sync_lag_seconds) still alerts before a first pass.
    for family in (lag, last_pass, alive, failures, skipped):
        if family.samples:
            yield family


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


def _upstream_figures(slugs: list[str], totals: dict[str, dict[str, int]]):
    """The upstream budget's shared counters (batches/budget.py) per connection: every call any process sent, its
    errors, its 429s."""
    for name, help_text in (
        ("calls", "Calls sent to the API by every process."),
        ("errors", "Calls that got no answer or an HTTP error."),
        ("rate_limited", "Calls the API answered with 429."),
    ):
        family = CounterMetricFamily(f"batchboard_upstream_{name}", help_text, labels=["connection"])
        for slug in slugs:
            family.add_metric([slug], totals.get(slug, {}).get(name, 0))
        yield family


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DashboardCollector())
    return generate_latest(registry)
