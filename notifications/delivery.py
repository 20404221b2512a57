"""Delivering a destination's waiting notifications: one send task per destination (not per notification) sends them
in a loop, oldest first, through one sending.Sender (the URL read and parsed once, one kept-alive connection).

Claims, so that a notification is sent once however many tasks and workers run:
- `Destination.send_due_at` says a send task is queued or running for the destination: a burst of events (1,000
  destinations x 10 batches) queues one task per destination, not one per notification. The task clears it when it
  finds nothing more, then looks once more, so a notification inserted meanwhile is either read by this loop or
  queues a new task.
- Each notification is still claimed by a conditional UPDATE (waiting, its lease expired) before it is sent, a chunk
  of them at once; a chunk's results (attempts, states) commit together, so a send costs about one query.

A failed send is recorded, backs off the notification (and the rest of its chunk: the destination is likely down), and
the task asks to run again when the first of them is due. A destination that fails
settings.BATCHBOARD_NOTIFY_PAUSE_AFTER times in a row is paused (the Notifications page shows a banner); while it is
paused its notifications are held, and resuming it sends the recent ones as one summary (`resume`).
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

from notifications import digest, messages, sending
from notifications.models import ERROR_LENGTH, Attempt, Destination, Notification, State, Step

logger = logging.getLogger("batches.notifications")

LEASE_SECONDS = 120.0
# A chunk's sends stop this long before its lease ends (a send may take sending.TIMEOUT); the rest are claimed again.
LEASE_MARGIN_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0
CHUNK = 50
HOLD_CHUNK = 1000


def send_waiting(destination_pk: int) -> datetime | None:
    """Send the destination's waiting notifications that this call can claim. Returns when the next of them is due
    after a failure (a retry's backoff; the caller queues a task for then), or None."""
    destination = Destination.objects.filter(pk=destination_pk).first()
    if destination is None:
        return None
    if destination.paused_at:
        hold_waiting(destination)
    run = _Run(destination)
    unmarked = False
    with sending.Sender(destination) as sender:
        while not run.failed:
            chunk = _claim(destination, timezone.now())
            if chunk:
                run.send(chunk, sender)
            if run.failed or len(chunk) == CHUNK or run.released:
                continue
            if unmarked:
                break
            # Nothing more waits. While the mark stayed, fan-outs queued no task, counting on this loop: drop it, then
            # look once more for what they inserted before it was dropped (anything later queues its own task).
            _unmark(destination)
            unmarked = True
    if not unmarked:
        _unmark(destination)
    return _next_due(destination) if run.failed else None


def _unmark(destination: Destination) -> None:
    Destination.objects.filter(pk=destination.pk).update(send_due_at=None)


def _claim(destination: Destination, now: datetime) -> list[Notification]:
    """Up to CHUNK of the destination's waiting notifications, oldest first, claimed by one conditional UPDATE (each
    row still waiting and its lease expired): a row another task claimed is not claimed again. The lease's instant,
    with random microseconds, tells this call's rows from those of any other call."""
    claimable = Q(state=State.PENDING) & (Q(busy_until__isnull=True) | Q(busy_until__lte=now))
    waiting = Notification.objects.filter(claimable, destination=destination)
    if destination.paused_at:
        waiting = waiting.filter(is_test=True)  # "Send a test" still goes: it tells whether the fault is fixed
    lease = now + timedelta(seconds=LEASE_SECONDS, microseconds=random.randrange(1_000_000))
    chosen = waiting.order_by("created_at", "pk").values("pk")[:CHUNK]
    Notification.objects.filter(claimable, pk__in=chosen).update(tries=F("tries") + 1, busy_until=lease)
    claimed = list(
        Notification.objects.filter(destination=destination, state=State.PENDING, busy_until=lease)
        .select_related("batch__connection", "batch__result_archive", "connection")
        .order_by("created_at", "pk")
    )
    for notification in claimed:
        notification.destination = destination
    return claimed


class _Run:
    """One task's run over a destination's chunks: what it sent, whether a send failed (the loop stops)."""

    def __init__(self, destination: Destination):
        self.destination = destination
        self.failed = False
        self.released = False  # the last chunk ran out of lease: the rest are claimed again
        self.recovered = False  # the destination's failure count was reset by a first success

    def send(self, chunk: list[Notification], sender: sending.Sender) -> None:
        started = time.monotonic()
        sent: list[Notification] = []
        self.released = False
        for index, notification in enumerate(chunk):
            if time.monotonic() - started > LEASE_SECONDS - LEASE_MARGIN_SECONDS:
                _release(chunk[index:])  # the next chunk claims them again, with a new lease
                self.released = True
                break
            if self.destination.digest_minutes and not notification.is_test:
                digest.hold(notification, self.destination)
                continue
            try:
                sender.send(messages.build(notification))
            except sending.SendFailed as exc:
                self._record_sent(sent)
                _failed(notification, self.destination, str(exc), rest=chunk[index + 1 :])
                self.failed = True
                return
            sent.append(notification)
        self._record_sent(sent)

    def _record_sent(self, sent: list[Notification]) -> None:
        """The attempts and the states of a chunk's sent notifications, in one transaction."""
        if not sent:
            return
        at = timezone.now()
        with transaction.atomic():
            Attempt.objects.bulk_create(Attempt(notification=notification, ok=True, at=at) for notification in sent)
            Notification.objects.filter(
                pk__in=[notification.pk for notification in sent], state=State.PENDING, busy_until=sent[0].busy_until
            ).update(state=State.SENT, busy_until=None, sent_at=at)
            if not self.recovered:
                Destination.objects.filter(pk=self.destination.pk, consecutive_failures__gt=0).update(
                    consecutive_failures=0, last_error=""
                )
                self.recovered = True


def _failed(notification: Notification, destination: Destination, reason: str, rest: list[Notification]) -> None:
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
        _settle(notification, State.FAILED)
        _release(rest)
        if Destination.objects.filter(pk=destination.pk, paused_at__isnull=True).update(paused_at=timezone.now()):
            logger.warning(
                "Destination %s (%s) paused after %s failures in a row.", destination.pk, destination.shown, failures
            )
        destination.refresh_from_db(fields=["paused_at"])
        hold_waiting(destination)
        return
    delay = backoff(notification.tries)
    if notification.is_test or notification.tries >= settings.BATCHBOARD_NOTIFY_MAX_TRIES:
        _settle(notification, State.FAILED)
    else:
        _mine(notification).update(busy_until=timezone.now() + delay)
    # The destination is likely down: the rest of the chunk, and whatever else waits for it, wait as long.
    until = timezone.now() + delay
    _release(rest, until=until)
    Notification.objects.filter(destination=destination, state=State.PENDING, busy_until__isnull=True).update(
        busy_until=until
    )


def _release(claimed: list[Notification], until: datetime | None = None) -> None:
    """Give back claims not tried: their try is not counted; claimable again at `until` (at once without)."""
    for notification in claimed:
        _mine(notification).update(tries=F("tries") - 1, busy_until=until)


def _next_due(destination: Destination) -> datetime | None:
    """When the first of the destination's waiting notifications (backing off) may be tried again."""
    waiting = Notification.objects.filter(destination=destination, state=State.PENDING)
    if destination.paused_at:
        waiting = waiting.filter(is_test=True)
    now = timezone.now()
    due = waiting.aggregate(
        first=Min("busy_until"), ready=Count("pk", filter=Q(busy_until__isnull=True) | Q(busy_until__lte=now))
    )
    return now if due["ready"] else due["first"]


def hold_waiting(destination: Destination) -> int:
    """Hold a paused destination's waiting notifications (not tests, nor those a running task has claimed): each is
    recorded as held in the delivery log, and `resume` sends the recent ones as one summary."""
    held = 0
    now = timezone.now()
    holdable = Q(destination=destination, state=State.PENDING, is_test=False) & (
        Q(busy_until__isnull=True) | Q(busy_until__lte=now)
    )
    while True:
        with transaction.atomic():
            pks = list(
                Notification.objects.select_for_update()
                .filter(holdable)
                .order_by("pk")
                .values_list("pk", flat=True)[:HOLD_CHUNK]
            )
            if not pks:
                return held
            Notification.objects.filter(holdable, pk__in=pks).update(state=State.HELD, busy_until=None)
            Attempt.objects.bulk_create(Attempt(notification_id=pk, ok=False, step=Step.HELD, at=now) for pk in pks)
        held += len(pks)


def resume(destination: Destination, now: datetime | None = None) -> tuple[int, int]:
    """Resume a paused destination. What it missed in the last settings.BATCHBOARD_NOTIFY_HELD_HOURS goes out as one
    summary (the digest's path: one message, its own claim, retries and backoff); older held notifications are
    marked not sent, with the reason. Returns (to be summarised, not sent)."""
    now = now or timezone.now()
    hours = settings.BATCHBOARD_NOTIFY_HELD_HOURS
    with transaction.atomic():
        if not Destination.objects.filter(pk=destination.pk, paused_at__isnull=False).update(
            paused_at=None, consecutive_failures=0
        ):
            return 0, 0
        held = Notification.objects.filter(destination=destination, state=State.HELD)
        stale = list(held.filter(created_at__lt=now - timedelta(hours=hours)).values_list("pk", flat=True))
        reason = f"held while the destination was paused, more than {hours} h before it was resumed"
        for start in range(0, len(stale), HOLD_CHUNK):
            pks = stale[start : start + HOLD_CHUNK]
            Notification.objects.filter(pk__in=pks, state=State.HELD).update(state=State.SKIPPED)
            Attempt.objects.bulk_create(
                Attempt(notification_id=pk, ok=False, step=Step.SKIPPED, error=reason, at=now) for pk in pks
            )
        recent = held.filter(created_at__gte=now - timedelta(hours=hours)).update(state=State.DIGEST)
        if recent:
            Destination.objects.filter(pk=destination.pk).update(digest_due_at=now)
            from notifications.tasks import enqueue_digest

            transaction.on_commit(partial(enqueue_digest, destination.pk, now))
        transaction.on_commit(partial(_enqueue_sends, destination.pk))
    logger.info(
        "Destination %s (%s) resumed: %s held notification(s) to summarise, %s not sent.",
        destination.pk,
        destination.shown,
        recent,
        len(stale),
    )
    return recent, len(stale)


def _enqueue_sends(destination_pk: int) -> None:
    from notifications.tasks import enqueue_sends

    enqueue_sends([destination_pk])


def backoff(tries: int) -> timedelta:
    """BATCHBOARD_NOTIFY_RETRY_SECONDS, doubled per try, at most an hour, with up to 20 % jitter."""
    seconds = min(settings.BATCHBOARD_NOTIFY_RETRY_SECONDS * 2 ** max(tries - 1, 0), BACKOFF_MAX_SECONDS)
    return timedelta(seconds=seconds * random.uniform(1.0, 1.2))


def _mine(notification: Notification):
    return Notification.objects.filter(pk=notification.pk, state=State.PENDING, tries=notification.tries)


def _settle(notification: Notification, state: str, **fields) -> None:
    _mine(notification).update(state=state, busy_until=None, **fields)
