"""Receiving the OpenAI API's webhooks, per connection: which connection a URL receives for and which secret
verifies it, the Standard Webhooks verification (REFERENCE §12.3, by the `standardwebhooks` library), and the delivery
row that hands the work to a task.

The receiver only verifies, records and enqueues: it never calls the API, so it answers within milliseconds whatever
the API's latency. Cost per delivery: one SELECT of the connection, one INSERT (two with the task), and at most one
UPDATE of its last_webhook_at every NOTE_EVERY; a refusal one UPDATE of a daily count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from batches import connections, normalise
from batches.models import Connection
from webhooks import tasks
from webhooks.models import Delivery, DeliveryState, Refusals

logger = logging.getLogger("batches.webhooks")

MAX_BODY_BYTES = 64 * 1024
# The events of a batch that reached a final status (REFERENCE §12.1); any other type is acknowledged and ignored.
BATCH_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.cancelled", "batch.expired"})
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# A connection's last_webhook_at is written at most this often: a burst of deliveries costs one UPDATE, not one each.
NOTE_EVERY = timedelta(seconds=5)


class Refused(Exception):
    """The delivery cannot be trusted (no or a bad signature, a timestamp more than 5 minutes off): 400."""


@dataclass(frozen=True)
class Received:
    delivery: Delivery | None  # None for a replay
    replayed: bool


def receiving_connection(slug: str | None) -> Connection | None:
    """The connection whose deliveries a URL receives: the default one at /webhooks/openai/, the one of that slug at
    /webhooks/openai/<slug>/. None for an unknown slug, a paused connection, or one whose definition is gone."""
    connection = Connection.objects.default() if slug is None else Connection.objects.filter(slug=slug).first()
    if connection is None or connection.paused or not connection.configured:
        return None
    return connection


def secret_for(connection: Connection, *, log: bool = False) -> str:
    """The `whsec_…` secret that signs this connection's deliveries (batches.connections.webhook_secret_of: the
    default connection's is BATCHBOARD_WEBHOOK_SECRET); "" when none is configured or it cannot be read, and then
    its receiver is off. `log`: say why a secret its definition names cannot be read (never the secret itself)."""
    try:
        return connections.webhook_secret_of(connection)
    except connections.KeyMissing as exc:
        if log:
            logger.warning("Webhook deliveries for connection %r are refused: %s", connection.slug, exc)
        return ""


def verify(secret: str, body: bytes, headers, *, connection: Connection | None = None) -> dict:
    """The verified event, or Refused: every check of §12.3 (headers present, timestamp within 300 s, any of the
    signatures matching under a constant-time comparison), then a JSON object. Refusals are logged and counted for
    the `connection` whose URL was posted to."""
    signed = {name: headers.get(name, "") for name in HEADERS}
    try:
        Webhook(secret).verify(body, signed, json_parse=False)
    except WebhookVerificationError as exc:
        _refuse(str(exc), signed["webhook-id"], connection)
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        event = None
    if not isinstance(event, dict):
        _refuse("the body is not a JSON object", signed["webhook-id"], connection)
    return event


def _refuse(reason: str, webhook_id: str, connection: Connection | None) -> None:
    # %r: the id comes from whoever sent the request, so its control characters are escaped, never written raw.
    slug = connection.slug if connection is not None else None
    logger.warning("Webhook delivery %r for connection %r refused: %s.", normalise.text(webhook_id, 200), slug, reason)
    try:
        Refusals.count_one(connection.pk if connection is not None else None)
    except DatabaseError as exc:  # the refusal stands; only its count is lost
        logger.warning("Could not count a refused webhook delivery: %s", exc)
    raise Refused(reason)


def record(connection: Connection, webhook_id: str, event: dict) -> Received:
    """Store the delivery once per connection (a replayed webhook-id changes nothing) and, for a batch event, enqueue
    the task that fetches the batch, when this transaction commits. Either way the connection has received a
    verified delivery just now (note_received)."""
    note_received(connection)
    event_type = _bounded(event.get("type"), 100)
    data = event.get("data")
    raw_batch_id = data.get("id") if isinstance(data, dict) else None
    shape = connection.id_shapes.batch
    valid = isinstance(raw_batch_id, str) and shape.fullmatch(raw_batch_id)
    batch_id = raw_batch_id if valid else ""
    state, error = DeliveryState.RECEIVED, ""
    if event_type not in BATCH_EVENTS:
        state, error = DeliveryState.IGNORED, "Not an event of a batch's end."
    elif not batch_id:
        state, error = DeliveryState.IGNORED, "The event names no valid batch id."
    try:
        with transaction.atomic():
            delivery = Delivery.objects.create(
                connection=connection,
                webhook_id=_bounded(webhook_id, 200),
                event_id=_bounded(event.get("id"), 200),
                event_type=event_type,
                batch_id=batch_id,
                state=state,
                error=error,
            )
    except IntegrityError:
        logger.info(
            "Webhook delivery %s for connection %r was received before; not processed again.",
            _bounded(webhook_id, 200),
            connection.slug,
        )
        return Received(delivery=None, replayed=True)
    if state == DeliveryState.RECEIVED:
        transaction.on_commit(partial(tasks.enqueue_processing, delivery.pk))
    return Received(delivery=delivery, replayed=False)


def note_received(connection: Connection, now: datetime | None = None) -> None:
    """Set the connection's last_webhook_at, unless it was set less than NOTE_EVERY ago: no write at all when the row
    just read says so, otherwise one conditional UPDATE (so concurrent receivers write once between them). A failure
    is logged and the delivery is recorded all the same: only the "last webhook received" line lags."""
    now = now or timezone.now()
    recent = now - NOTE_EVERY
    if connection.last_webhook_at is not None and connection.last_webhook_at > recent:
        return
    stale = Q(last_webhook_at__isnull=True) | Q(last_webhook_at__lte=recent)
    try:
        Connection.objects.filter(stale, pk=connection.pk).update(last_webhook_at=now)
    except DatabaseError as exc:
        logger.warning("Could not note the webhook received for connection %r: %s", connection.slug, exc)
    connection.last_webhook_at = now


def _bounded(value, length: int) -> str:
    return normalise.text(value, length) if isinstance(value, str) else ""
