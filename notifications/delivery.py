"""Delivering one notification: claim its row (a conditional UPDATE, so a duplicate task or a second worker returns
at once), send, record the attempt for the delivery log, and either settle or ask to be tried again with backoff.
A destination that fails settings.BATCHBOARD_NOTIFY_PAUSE_AFTER times in a row is paused (the Notifications page
shows a banner) and its waiting notifications are skipped until someone resumes it."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from notifications import digest, messages, sending
from notifications.models import ERROR_LENGTH, Attempt, Destination, Notification, State

logger = logging.getLogger("batches.notifications")

LEASE_SECONDS = 120.0
BACKOFF_MAX_SECONDS = 3600.0


def deliver(notification_pk: int, now: datetime | None = None) -> timedelta | None:
    """Send the notification if this call can claim it. Returns when to try again (the caller enqueues that try),
    or None when there is nothing more to do."""
    now = now or timezone.now()
    claimable = Q(state=State.PENDING) & (Q(busy_until__isnull=True) | Q(busy_until__lte=now))
    claim = {"tries": F("tries") + 1, "busy_until": now + timedelta(seconds=LEASE_SECONDS)}
    if not Notification.objects.filter(claimable, pk=notification_pk).update(**claim):
        return None
    notification = Notification.objects.select_related(
        "destination", "batch__connection", "batch__result_archive", "connection"
    ).get(pk=notification_pk)
    destination = notification.destination
    if destination.paused_at and not notification.is_test:
        _settle(notification, State.SKIPPED)
        return None
    if destination.digest_minutes and not notification.is_test:
        digest.hold(notification, destination)
        return None
    try:
        sending.send(destination, messages.build(notification))
    except sending.SendFailed as exc:
        return _failed(notification, destination, str(exc))
    Attempt.objects.create(notification=notification, ok=True)
    Destination.objects.filter(pk=destination.pk, consecutive_failures__gt=0).update(
        consecutive_failures=0, last_error=""
    )
    _settle(notification, State.SENT, sent_at=timezone.now())
    return None


def _failed(notification: Notification, destination: Destination, reason: str) -> timedelta | None:
    reason = reason[:ERROR_LENGTH]
    Attempt.objects.create(notification=notification, ok=False, error=reason)
    Destination.objects.filter(pk=destination.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=reason
    )
    failures = Destination.objects.filter(pk=destination.pk).values_list("consecutive_failures", flat=True).first()
    logger.warning(
        "Notification %s to destination %s (%s) failed (try %s): %s",
        notification.pk,
        destination.pk,
        destination.shown,
        notification.tries,
        reason,
    )
    if failures is not None and failures >= settings.BATCHBOARD_NOTIFY_PAUSE_AFTER:
        if Destination.objects.filter(pk=destination.pk, paused_at__isnull=True).update(paused_at=timezone.now()):
            logger.warning(
                "Destination %s (%s) paused after %s failures in a row.", destination.pk, destination.shown, failures
            )
        _settle(notification, State.FAILED)
        return None
    if notification.is_test or notification.tries >= settings.BATCHBOARD_NOTIFY_MAX_TRIES:
        _settle(notification, State.FAILED)
        return None
    delay = backoff(notification.tries)
    _mine(notification).update(busy_until=timezone.now() + delay)
    return delay


def backoff(tries: int) -> timedelta:
    """BATCHBOARD_NOTIFY_RETRY_SECONDS, doubled per try, at most an hour, with up to 20 % jitter."""
    seconds = min(settings.BATCHBOARD_NOTIFY_RETRY_SECONDS * 2 ** max(tries - 1, 0), BACKOFF_MAX_SECONDS)
    return timedelta(seconds=seconds * random.uniform(1.0, 1.2))


def _mine(notification: Notification):
    return Notification.objects.filter(pk=notification.pk, state=State.PENDING, tries=notification.tries)


def _settle(notification: Notification, state: str, **fields) -> None:
    _mine(notification).update(state=state, busy_until=None, **fields)
