"""Receiving the OpenAI API's webhooks: which secret verifies them, the Standard Webhooks verification (REFERENCE
§12.3, by the `standardwebhooks` library), and the delivery row that hands the work to a task.

The receiver only verifies, records and enqueues: it never calls the API, so it answers within milliseconds whatever
the API's latency. Cost per delivery: one INSERT (two with the task), and a refusal one UPDATE of a daily count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from batches import normalise, services
from webhooks import tasks
from webhooks.models import Delivery, DeliveryState, Refusals

logger = logging.getLogger("batches.webhooks")

MAX_BODY_BYTES = 64 * 1024
# The events of a batch that reached a final status (REFERENCE §12.1); any other type is acknowledged and ignored.
BATCH_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.cancelled", "batch.expired"})
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class Refused(Exception):
    """The delivery cannot be trusted (no or a bad signature, a timestamp more than 5 minutes off): 400."""


@dataclass(frozen=True)
class Received:
    delivery: Delivery | None  # None for a replay
    replayed: bool


def secret_for(connection: str | None = None) -> str:
    """The `whsec_…` secret that signs this connection's deliveries; "" when none is configured (the receiver is
    then off). One setting while there is one connection: a connection's own secret goes here."""
    return settings.BATCHBOARD_WEBHOOK_SECRET


def verify(secret: str, body: bytes, headers) -> dict:
    """The verified event, or Refused: every check of §12.3 (headers present, timestamp within 300 s, any of the
    signatures matching under a constant-time comparison), then a JSON object. Refusals are logged and counted."""
    signed = {name: headers.get(name, "") for name in HEADERS}
    try:
        Webhook(secret).verify(body, signed, json_parse=False)
    except WebhookVerificationError as exc:
        _refuse(str(exc), signed["webhook-id"])
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        event = None
    if not isinstance(event, dict):
        _refuse("the body is not a JSON object", signed["webhook-id"])
    return event


def _refuse(reason: str, webhook_id: str) -> None:
    # %r: the id comes from whoever sent the request, so its control characters are escaped, never written raw.
    logger.warning("Webhook delivery %r refused: %s.", normalise.text(webhook_id, 200), reason)
    try:
        Refusals.count_one()
    except DatabaseError as exc:  # the refusal stands; only its count is lost
        logger.warning("Could not count a refused webhook delivery: %s", exc)
    raise Refused(reason)


def record(webhook_id: str, event: dict) -> Received:
    """Store the delivery once (a replayed webhook-id changes nothing) and, for a batch event, enqueue the task that
    fetches the batch, when this transaction commits."""
    event_type = _bounded(event.get("type"), 100)
    data = event.get("data")
    raw_batch_id = data.get("id") if isinstance(data, dict) else None
    # TODO(compat, issue 19 item 7): a compatible connection's ids have no OpenAI shape; check the id against the
    # receiving connection's shape (Connection.id_shapes.batch) once deliveries know their connection, and widen
    # Delivery.batch_id to services.ID_LENGTH (the webhooks-per-connection work owns this app).
    valid = isinstance(raw_batch_id, str) and services.BATCH_ID_PATTERN.fullmatch(raw_batch_id)
    batch_id = raw_batch_id if valid else ""
    state, error = DeliveryState.RECEIVED, ""
    if event_type not in BATCH_EVENTS:
        state, error = DeliveryState.IGNORED, "Not an event of a batch's end."
    elif not batch_id:
        state, error = DeliveryState.IGNORED, "The event names no valid batch id."
    try:
        with transaction.atomic():
            delivery = Delivery.objects.create(
                webhook_id=_bounded(webhook_id, 200),
                event_id=_bounded(event.get("id"), 200),
                event_type=event_type,
                batch_id=batch_id,
                state=state,
                error=error,
            )
    except IntegrityError:
        logger.info("Webhook delivery %s was received before; not processed again.", _bounded(webhook_id, 200))
        return Received(delivery=None, replayed=True)
    if state == DeliveryState.RECEIVED:
        transaction.on_commit(partial(tasks.enqueue_processing, delivery.pk))
    return Received(delivery=delivery, replayed=False)


def _bounded(value, length: int) -> str:
    return normalise.text(value, length) if isinstance(value, str) else ""
