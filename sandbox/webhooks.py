"""The sandbox sends webhooks the way the API does (REFERENCE §12): when a batch reaches completed, failed, cancelled
or expired, it signs a `batch.<status>` event with its organisation's secret (Standard Webhooks, by the
`standardwebhooks` library) and POSTs it to its organisation's URL, retrying non-2xx answers with backoff. As on the
API, where each project has its own webhook endpoints: the first organisation's events go to SANDBOX_WEBHOOK_URL
signed with SANDBOX_WEBHOOK_SECRET, the second's to SANDBOX_SECOND_WEBHOOK_URL with SANDBOX_SECOND_WEBHOOK_SECRET. An
organisation without both sends nothing, and its batches that turn final meanwhile get no event.

A batch's state is computed from the time (simulation.py), so nothing happens at the moment it turns final: a
sender (`manage.py sandbox_webhooks`, or a thread of `manage.py serve`) calls `dispatch()` every half second. Each
batch carries the moment its plan makes it final (`webhook_due_at`, moved by a cancel), so a tick reads only the
batches due since the last one (an indexed range, whatever the number running), creates each one's event once
(unique per batch and type), and sends what is due.

Faults for testing a receiver: SANDBOX_WEBHOOK_DUPLICATE_RATE sends a delivery twice, SANDBOX_WEBHOOK_MAX_DELAY holds
each event back a random while (so events also arrive out of order).
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import time
from datetime import UTC, datetime

import requests
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from standardwebhooks.webhooks import Webhook

from sandbox import clock, organisations
from sandbox.models import SandboxBatch, SandboxWebhook
from sandbox.simulation import state_at

logger = logging.getLogger(__name__)

EVENT_TYPES = {status: f"batch.{status}" for status in ("completed", "failed", "cancelled", "expired")}
USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
TICK_SECONDS = 0.5
# A batch that turned final longer ago than this when first noticed (the sender was off) gets no event.
NOTICE_WINDOW_SECONDS = 3600
NOTICE_CHUNK = 500
SEND_CHUNK = 50
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
# A sender holds a claimed delivery this long: another sender takes it over after a crash.
CLAIM_SECONDS = 60.0
TIMEOUT = (2.0, 5.0)

# Faults draw from their own generator, so a test can seed it and get the same faults every run.
fault_draws = random.Random()


def destinations() -> dict[str, tuple[str, str]]:
    """(URL, secret) of each organisation that sends webhooks; read from settings at call time, so tests can change
    them."""
    configured = {
        organisations.FIRST: (settings.SANDBOX_WEBHOOK_URL, settings.SANDBOX_WEBHOOK_SECRET),
        organisations.SECOND: (settings.SANDBOX_SECOND_WEBHOOK_URL, settings.SANDBOX_SECOND_WEBHOOK_SECRET),
    }
    return {organisation: pair for organisation, pair in configured.items() if all(pair)}


def enabled() -> bool:
    return bool(destinations())


def dispatch(now: float | None = None) -> int:
    """Create the events of batches that turned final, then send the deliveries that are due; how many were sent."""
    if not enabled():
        return 0
    now = clock.now() if now is None else now
    notice_final(now)
    return send_due(now)


def notice_final(now: float) -> int:
    """Create the event of each pending batch that is final at `now`, once, if its organisation sends webhooks; how
    many were created."""
    sending = destinations()
    created = 0
    due = SandboxBatch.objects.filter(webhook_due_at__lte=now).order_by("webhook_due_at")
    for batch in due[:NOTICE_CHUNK]:
        state = state_at(batch.plan, now)
        if not state.is_terminal:
            continue  # due by a hair's rounding: the next tick sees it final
        recent = now - (state.terminal_at or now) <= NOTICE_WINDOW_SECONDS
        if recent and batch.organisation in sending:
            created += _create_event(batch, state.status, state.terminal_at or int(now), now)
        SandboxBatch.objects.filter(pk=batch.pk).update(webhook_due_at=None)
    return created


def _create_event(batch: SandboxBatch, status: str, final_at: int, now: float) -> int:
    body = {
        "id": "evt_" + secrets.token_hex(16),
        "object": "event",
        "created_at": final_at,
        "type": EVENT_TYPES[status],
        "data": {"id": batch.id},
    }
    delay = fault_draws.uniform(0.0, settings.SANDBOX_WEBHOOK_MAX_DELAY) if settings.SANDBOX_WEBHOOK_MAX_DELAY else 0
    try:
        with transaction.atomic():
            SandboxWebhook.objects.create(
                batch_id=batch.id,
                organisation=batch.organisation,
                type=body["type"],
                webhook_id="wh_" + secrets.token_hex(16),
                body=json.dumps(body, separators=(",", ":")),
                next_attempt_at=now + delay,
            )
    except IntegrityError:  # another sender noticed it first
        return 0
    return 1


def send_due(now: float) -> int:
    sending = destinations()
    due = SandboxWebhook.objects.filter(
        delivered_at__isnull=True, gave_up=False, next_attempt_at__lte=now, organisation__in=list(sending)
    )
    sent = 0
    for webhook in due.order_by("next_attempt_at")[:SEND_CHUNK]:
        claimed = SandboxWebhook.objects.filter(pk=webhook.pk, next_attempt_at=webhook.next_attempt_at).update(
            next_attempt_at=now + CLAIM_SECONDS
        )
        if claimed:
            _attempt(webhook, now, *sending[webhook.organisation])
            sent += 1
    return sent


def _attempt(webhook: SandboxWebhook, now: float, url: str, secret: str) -> None:
    status = _post(webhook, url, secret)
    posts = 1
    if status is not None and 200 <= status < 300:
        if fault_draws.random() < settings.SANDBOX_WEBHOOK_DUPLICATE_RATE:
            # At least once: the same delivery again, as a sender that missed the answer would.
            _post(webhook, url, secret)
            posts += 1
        SandboxWebhook.objects.filter(pk=webhook.pk).update(
            delivered_at=now, last_status=status, attempts=webhook.attempts + 1, sent=webhook.sent + posts
        )
        return
    attempts = webhook.attempts + 1
    wait = min(BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), BACKOFF_MAX_SECONDS) * fault_draws.uniform(1.0, 1.2)
    gave_up = attempts >= MAX_ATTEMPTS
    if gave_up:
        logger.warning(
            "Sandbox webhook %s for %s not delivered after %s attempts.", webhook.type, webhook.batch_id, attempts
        )
    SandboxWebhook.objects.filter(pk=webhook.pk).update(
        attempts=attempts, last_status=status, gave_up=gave_up, next_attempt_at=now + wait, sent=webhook.sent + posts
    )


def _post(webhook: SandboxWebhook, url: str, secret: str) -> int | None:
    """Sign the event now (the timestamp is the attempt's) and POST it: the receiver's status, or None."""
    body = webhook.body.encode()
    moment = datetime.fromtimestamp(time.time(), tz=UTC)  # the real time: the receiver checks it against its clock
    headers = {
        "webhook-id": webhook.webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook.webhook_id, moment, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    try:
        response = requests.post(url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        logger.info("Sandbox webhook %s for %s: no answer (%s).", webhook.type, webhook.batch_id, exc)
        return None
    response.close()
    return response.status_code


def run(stop: threading.Event, interval: float = TICK_SECONDS) -> None:
    """Dispatch every `interval` seconds until `stop` is set; a failing tick is logged and the next one runs."""
    try:
        while not stop.is_set():
            try:
                dispatch()
            except Exception:
                logger.exception("Sending the sandbox's webhooks failed; trying again.")
            stop.wait(interval)
    finally:
        connections.close_all()
