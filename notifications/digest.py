"""Digests: a destination with `digest_minutes` gets one message per that many minutes, listing what happened,
instead of one message per event.

A notification for such a destination is held (state DIGEST) by its send task, and the first one held sets the
destination's `digest_due_at` (a conditional UPDATE: one digest task per window, whichever worker holds first). The
digest task claims the destination's due digest the same way, sends one message for up to DIGEST_LIMIT gathered
notifications (listing the first LISTED, counting the rest), and records an attempt for each. Resuming a paused
destination sends what it missed through the same path (notifications.delivery.resume), as one summary.
A failure is retried with the same backoff as a single send, and counts once toward pausing the destination.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from notifications import messages, sending
from notifications.models import ERROR_LENGTH, Attempt, Destination, Notification, State, Step

logger = logging.getLogger("batches.notifications")

# A digest lists this many notifications, a line each, and counts the rest (up to DIGEST_LIMIT in one message).
LISTED = 50
DIGEST_LIMIT = 10_000
LEASE = timedelta(minutes=2)


def hold(notification: Notification, destination: Destination) -> None:
    """Put a claimed notification into its destination's next digest, and make sure a digest is due."""
    Notification.objects.filter(pk=notification.pk, state=State.PENDING, tries=notification.tries).update(
        state=State.DIGEST, busy_until=None, tries=F("tries") - 1
    )
    due = timezone.now() + timedelta(minutes=destination.digest_minutes)
    if Destination.objects.filter(pk=destination.pk, digest_due_at__isnull=True).update(digest_due_at=due):
        from notifications.tasks import enqueue_digest

        transaction.on_commit(partial(enqueue_digest, destination.pk, due))


def send_digest(destination_pk: int, now: datetime | None = None) -> datetime | None:
    """Send the destination's due digest if this call can claim it. Returns when the next digest is due (the caller
    enqueues it), or None."""
    now = now or timezone.now()
    if not Destination.objects.filter(pk=destination_pk, digest_due_at__lte=now).update(digest_due_at=now + LEASE):
        return None
    destination = Destination.objects.get(pk=destination_pk)
    gathered = Notification.objects.filter(destination=destination, state=State.DIGEST).order_by("created_at", "pk")
    listed = list(gathered.select_related("batch__connection", "connection")[:LISTED])
    pks = [notification.pk for notification in listed]
    if len(listed) == LISTED:
        pks += list(gathered.values_list("pk", flat=True)[LISTED:DIGEST_LIMIT])
    if destination.paused_at:
        Notification.objects.filter(pk__in=pks, state=State.DIGEST).update(state=State.HELD)
        Attempt.objects.bulk_create(Attempt(notification_id=pk, ok=False, step=Step.HELD, at=now) for pk in pks)
        return _next(destination)
    if not pks:
        return _next(destination)
    Notification.objects.filter(pk__in=pks).update(tries=F("tries") + 1)
    was_held = Attempt.objects.filter(notification__in=pks, step=Step.HELD).exists()
    try:
        sending.send(destination, messages.digest(destination, listed, len(pks), held=was_held))
    except sending.SendFailed as exc:
        return _failed(destination, pks, str(exc)[:ERROR_LENGTH])
    at = timezone.now()
    Attempt.objects.bulk_create(Attempt(notification_id=pk, ok=True, at=at, step=Step.SUMMARY) for pk in pks)
    Notification.objects.filter(pk__in=pks).update(state=State.SENT, sent_at=at)
    Destination.objects.filter(pk=destination.pk, consecutive_failures__gt=0).update(
        consecutive_failures=0, last_error=""
    )
    return _next(destination)


def _next(destination: Destination) -> datetime | None:
    """Release the claim: a new digest window starts with the next held notification (or at once, when more are
    held than one digest carries)."""
    more = Notification.objects.filter(destination=destination, state=State.DIGEST).exists()
    due = timezone.now() if more else None
    Destination.objects.filter(pk=destination.pk).update(digest_due_at=due)
    return due


def _failed(destination: Destination, pks: list[int], reason: str) -> datetime | None:
    from notifications.delivery import backoff

    Attempt.objects.bulk_create(Attempt(notification_id=pk, ok=False, error=reason, step=Step.SUMMARY) for pk in pks)
    Destination.objects.filter(pk=destination.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=reason
    )
    failures = Destination.objects.filter(pk=destination.pk).values_list("consecutive_failures", flat=True).first()
    logger.warning("Digest to destination %s (%s) failed: %s", destination.pk, destination.shown, reason)
    worn_out = Notification.objects.filter(pk__in=pks, tries__gte=settings.BATCHBOARD_NOTIFY_MAX_TRIES)
    worn_out.update(state=State.FAILED)
    if failures is not None and failures >= settings.BATCHBOARD_NOTIFY_PAUSE_AFTER:
        Destination.objects.filter(pk=destination.pk, paused_at__isnull=True).update(paused_at=timezone.now())
        # Not delivered: held for the summary that resuming the destination sends.
        Notification.objects.filter(pk__in=pks, state=State.DIGEST).update(state=State.HELD)
        logger.warning(
            "Destination %s (%s) paused after %s failures in a row.", destination.pk, destination.shown, failures
        )
        return _next(destination)
    tries = max(Notification.objects.filter(pk__in=pks).values_list("tries", flat=True), default=1)
    due = timezone.now() + backoff(tries)
    Destination.objects.filter(pk=destination.pk).update(digest_due_at=due)
    return due
