"""What the pages say about the webhook receiver: whether it is on, and when the last delivery arrived (one row)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from webhooks.models import Delivery
from webhooks.receiving import secret_for


@dataclass(frozen=True)
class ReceiverStatus:
    configured: bool
    last_received_at: datetime | None


def receiver_status(connection: str | None = None) -> ReceiverStatus:
    """No query when the receiver is off; otherwise one indexed row."""
    if not secret_for(connection):
        return ReceiverStatus(configured=False, last_received_at=None)
    return ReceiverStatus(configured=True, last_received_at=Delivery.objects.last_received_at())
