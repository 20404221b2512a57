"""The notifications app's tasks (django.tasks, run by `manage.py db_worker`)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction
from django.db.models import Q
from django.tasks import task
from django.utils import timezone

from batches import reactions
from notifications import checks, delivery, digest, fanout, jobs
from notifications.models import Destination, Notification, State

logger = logging.getLogger("batches.notifications")

FINAL_STEP = jobs.FINAL_STEP
STALE = timedelta(minutes=15)


@task()
def notify_final(reaction_id: int) -> None:
    """Fan a batch that became final out to the destinations that asked, once: the reaction is the claim, and each
    Notification row is unique."""
    reactions.run(reaction_id, _notify_final)


def _notify_final(reaction) -> None:
    batch = reaction.batch
    fanout.notify_batch(batch, fanout.finished_events(batch))


@task()
def send_waiting(destination_pk: int) -> None:
    """Send a destination's waiting notifications, in a loop; queue the next run when a retry is due."""
    due = delivery.send_waiting(destination_pk)
    if due is not None:
        enqueue_sends([destination_pk], due=due)


@task()
def deliver(notification_pk: int) -> None:
    """A send queued by an earlier version (one task per notification): its destination's loop sends it."""
    destination_pk = Notification.objects.filter(pk=notification_pk).values_list("destination", flat=True).first()
    if destination_pk is not None:
        enqueue_sends([destination_pk])


@task()
def check_conditions() -> None:
    """The periodic checks (stuck, expiring soon, monthly budgets), and sends whose task was lost."""
    checks.check_all()
    lost_deliveries()


def enqueue_sends(destination_pks, due: datetime | None = None) -> int:
    """Queue a send task for each of these destinations that has none queued by `due` (at once without), in one
    transaction (one commit, not one each: SQLite has a single writer). A mark older than STALE is a lost task's
    (enqueue failed, worker killed) and queues again. Returns how many were queued."""
    now = timezone.now()
    due = due or now
    destination_pks = list(destination_pks)
    free = Q(send_due_at__isnull=True) | Q(send_due_at__lt=now - STALE) | Q(send_due_at__gt=due)
    try:
        with transaction.atomic():
            # Rows another transaction holds (a concurrent fan-out queueing the same destination) are skipped: it
            # queues them, or a send task holding one looks again once it has cleared its mark.
            pks = list(
                Destination.objects.select_for_update(skip_locked=True)
                .filter(free, pk__in=destination_pks)
                .values_list("pk", flat=True)
            )
            Destination.objects.filter(pk__in=pks).update(send_due_at=due)
            run_after = due if due > now else None
            for pk in pks:
                send_waiting.using(run_after=run_after).enqueue(pk)
    except DatabaseError as exc:
        logger.warning(
            "Could not queue the sends of %s destination(s): %s; the next check will.", len(destination_pks), exc
        )
        return 0
    return len(pks)


@task()
def send_digest(destination_pk: int) -> None:
    """Send a destination's digest, once per window: its digest_due_at is the claim."""
    due = digest.send_digest(destination_pk)
    if due is not None:
        enqueue_digest(destination_pk, due)


def enqueue_digest(destination_pk: int, due) -> None:
    try:
        send_digest.using(run_after=due).enqueue(destination_pk)
    except DatabaseError as exc:
        logger.warning("Could not enqueue the digest of destination %s: %s; the next check will.", destination_pk, exc)


def lost_deliveries() -> None:
    """Queue again the sends whose task never came (lost enqueue, killed worker): the claims make a duplicate
    harmless."""
    now = timezone.now()
    stale = now - STALE
    waiting = Notification.objects.filter(state=State.PENDING, created_at__lte=stale, busy_until__isnull=True)
    expired = Notification.objects.filter(state=State.PENDING, busy_until__lte=stale)
    # Held by a fan-out that saw the destination paused just before it was resumed: sent as the others were.
    orphans = Notification.objects.filter(state=State.HELD, destination__paused_at__isnull=True, created_at__lte=stale)
    orphaned = set(orphans.values_list("destination", flat=True).distinct()[:100])
    orphans.filter(destination__in=orphaned).update(state=State.PENDING, busy_until=None)
    destinations = set(waiting.values_list("destination", flat=True).distinct()[:100]) | orphaned
    destinations |= set(expired.values_list("destination", flat=True).distinct()[:100])
    if destinations:
        enqueue_sends(destinations, due=now)
    for pk in Destination.objects.filter(digest_due_at__lte=stale).values_list("pk", flat=True)[:100]:
        enqueue_digest(pk, None)


@task()
def notify_stuck(reaction_id: int) -> None:
    reactions.run(reaction_id, checks.fan_out_stuck)


@task()
def notify_expiring(reaction_id: int) -> None:
    reactions.run(reaction_id, checks.fan_out_expiring)


@task()
def notify_job(reaction_id: int) -> None:
    reactions.run(reaction_id, jobs.fan_out_job)
