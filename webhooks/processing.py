"""Processing a received delivery: retrieve the batch it names from the connection that received it (one upstream
call, with that connection's key and budget) and record it in that connection through the one recording function,
so that whatever follows a recorded state (keeping results, automatic retries) follows here too.

Exactly once per delivery: a conditional UPDATE on the delivery row claims it, so a duplicate task or a second
worker returns at once. A failure is retried with backoff up to MAX_TRIES and then recorded with its reason. A lost
task is enqueued again by the next delivery's task (`lost`); meanwhile the sync loop's next pass sees the change.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from batches import services
from batches.freshness import failure_message
from batches.models import Batch, record_batch
from webhooks.models import Delivery, DeliveryState

logger = logging.getLogger("batches.webhooks")

MAX_TRIES = 6
LEASE_SECONDS = 120.0
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0
ERROR_LENGTH = 1000
# A delivery still waiting this long after it was due has lost its task.
LOST_AFTER = timedelta(minutes=15)
LOST_CHUNK = 100


def process(delivery_pk: int) -> timedelta | None:
    """Process the delivery if this call can claim it. Returns when to try again (the caller enqueues that try), or
    None when there is nothing more to do (processed, failed for good, or not ours to process)."""
    now = timezone.now()
    claimable = Q(state=DeliveryState.RECEIVED) & (Q(busy_until__isnull=True) | Q(busy_until__lte=now))
    claim = {"tries": F("tries") + 1, "busy_until": now + timedelta(seconds=LEASE_SECONDS)}
    if not Delivery.objects.filter(claimable, pk=delivery_pk).update(**claim):
        return None
    delivery = Delivery.objects.select_related("connection").get(pk=delivery_pk)
    connection = delivery.connection
    if connection.paused or not connection.configured:  # paused since it arrived: no call to its API
        state = "paused" if connection.paused else "no longer configured"
        _settle(delivery, DeliveryState.FAILED, note=f"Connection {connection.name} is {state}; not fetched.")
        return None
    stored = Batch.objects.filter(connection=connection, batch_id=delivery.batch_id, is_terminal=True)
    stored = stored.values_list("status", flat=True).first()
    if stored is not None:  # the sync loop (or a page) saw it final first: a final batch changes no more
        _settle(delivery, DeliveryState.PROCESSED, note=f"Already recorded as {stored}; nothing to fetch.")
        return None
    try:
        batch = services.get_client(services.CallFor.LOOP, connection).retrieve_batch(delivery.batch_id)
        record_batch(batch, connection=connection)
    except services.BudgetExhausted as exc:
        # batchboard's own budget of API calls is spent this minute: wait for it without counting a try.
        delay = timedelta(seconds=max(exc.retry_after or 60.0, 1.0))
        _wait(delivery, delay, failure_message(exc), tries=F("tries") - 1)
        return delay
    except services.NotFound as exc:
        _settle(delivery, DeliveryState.FAILED, note=f"The API does not know this batch: {failure_message(exc)}")
        return None
    except Exception as exc:
        reason = failure_message(exc) if isinstance(exc, services.BatchApiError) else f"{type(exc).__name__}: {exc}"
        if delivery.tries >= MAX_TRIES:
            logger.warning("Webhook delivery %s failed after %s tries: %s", delivery.webhook_id, delivery.tries, reason)
            _settle(delivery, DeliveryState.FAILED, note=reason)
            return None
        delay = backoff(delivery.tries)
        logger.info(
            "Webhook delivery %s failed (try %s), will try again: %s", delivery.webhook_id, delivery.tries, reason
        )
        _wait(delivery, delay, reason)
        return delay
    _settle(delivery, DeliveryState.PROCESSED, note="")
    Delivery.objects.prune()
    return None


def lost(now=None) -> list[int]:
    """Deliveries whose task never came (an enqueue lost, a worker killed): waiting and due for LOST_AFTER, at most
    LOST_CHUNK. Enqueuing them again is harmless: the claim lets one task through."""
    now = now or timezone.now()
    stale = now - LOST_AFTER
    waiting = Delivery.objects.filter(state=DeliveryState.RECEIVED, received_at__lte=stale)
    waiting = waiting.filter(Q(busy_until__isnull=True) | Q(busy_until__lte=stale))
    return list(waiting.order_by("received_at").values_list("pk", flat=True)[:LOST_CHUNK])


def backoff(tries: int) -> timedelta:
    """30 s, 1 min, 2 min … at most an hour, with up to 20 % jitter."""
    seconds = min(BACKOFF_BASE_SECONDS * 2 ** max(tries - 1, 0), BACKOFF_MAX_SECONDS)
    return timedelta(seconds=seconds * random.uniform(1.0, 1.2))


def _mine(delivery: Delivery):
    """The delivery while this claim holds it (`tries` names the claim)."""
    return Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.RECEIVED, tries=delivery.tries)


def _settle(delivery: Delivery, state: str, *, note: str) -> None:
    _mine(delivery).update(state=state, busy_until=None, processed_at=timezone.now(), error=_bounded(note))


def _wait(delivery: Delivery, delay: timedelta, reason: str, **fields) -> None:
    _mine(delivery).update(busy_until=timezone.now() + delay, error=_bounded(reason), **fields)


def _bounded(text: str) -> str:
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"
