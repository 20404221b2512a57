"""What the webhook receiver adds to /metrics (registered into batches.metrics, which may not import this app)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

from webhooks.models import Refusals


def refusal_figures(slugs: dict[int, str]):
    """Deliveries refused on each connection's URL: a rise is a misconfigured secret, a clock off, or forgeries."""
    totals = Refusals.totals_by_connection()
    family = CounterMetricFamily(
        "batchboard_webhook_refusals",
        "Webhook deliveries refused (no or a bad signature, a timestamp more than 5 minutes off, a body that is no "
        "JSON object), by the connection whose URL was posted to.",
        labels=["connection"],
    )
    for connection_id, slug in slugs.items():
        family.add_metric([slug], totals.get(connection_id, 0))
    yield family
