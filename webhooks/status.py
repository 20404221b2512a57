"""What the pages say about the webhook receivers: for each connection shown that receives webhooks (not paused, a
secret configured), where its deliveries go and when the last one arrived (Connection.last_webhook_at).

No query of its own: it reads the connection rows the page has already (batches.access.connections on the list, the
batch's connection on the detail page) and the secrets' settings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.urls import reverse

from batches import access
from batches.models import Connection
from webhooks.receiving import secret_for


@dataclass(frozen=True)
class Receiver:
    name: str
    path: str  # where the API should send this connection's deliveries
    last_received_at: datetime | None


@dataclass(frozen=True)
class ReceiverStatus:
    receivers: tuple[Receiver, ...]
    named: bool  # several connections could be shown: each line names its own

    @property
    def configured(self) -> bool:
        return bool(self.receivers)

    @property
    def key(self) -> tuple:
        return tuple((receiver.path, receiver.last_received_at) for receiver in self.receivers)


def receiver_path(connection: Connection) -> str:
    if connection.is_default:
        return reverse("webhooks:openai")
    return reverse("webhooks:openai_connection", args=[connection.slug])


def receiver_status(connections: Iterable[Connection], *, named: bool | None = None) -> ReceiverStatus:
    """The receivers among `connections`; `named` defaults to "more than one connection was given"."""
    connections = list(connections)
    receivers = tuple(
        Receiver(name=connection.name, path=receiver_path(connection), last_received_at=connection.last_webhook_at)
        for connection in connections
        if connection.configured and not connection.paused and secret_for(connection)
    )
    return ReceiverStatus(receivers=receivers, named=len(connections) > 1 if named is None else named)


def visible_receivers(user) -> ReceiverStatus:
    """The receivers of the connections `user` may see (read once per request already)."""
    return receiver_status(access.connections(user))
