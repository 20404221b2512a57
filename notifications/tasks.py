"""The notifications app's tasks (django.tasks, run by `manage.py db_worker`)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.tasks import task
from django.utils import timezone

from batches import reactions
from notifications import checks, delivery, digest, fanout, jobs
from notifications.models import Destination, Notification, State

logger = logging.getLogger("batches.notifications")

FINAL_STEP = jobs.FINAL_STEP


@task()
def notify_final(reaction_id: int) -> None:
    """Fan a batch that became final out to the destinations that asked, once: the reaction is the claim, and each
    Notification row is unique."""
    reactions.run(reaction_id, _notify_final)


def _notify_final(reaction) -> None:
    batch = reaction.batch
    fanout.notify_batch(batch, fanout.finished_events(batch))


@task()
def deliver(notification_pk: int) -> None:
    again = delivery.deliver(notification_pk)
    if again is not None:
        enqueue_delivery(notification_pk, again)


@task()
def check_conditions() -> None:
    """The periodic checks (stuck, expiring soon, monthly budgets), and sends whose task was lost."""
    checks.check_all()
    lost_deliveries()


def enqueue_delivery(notification_pk: int, after: timedelta | None = None) -> None:
    run_after = timezone.now() + after if after else None
    try:
        deliver.using(run_after=run_after).enqueue(notification_pk)
    except DatabaseError as exc:
        logger.warning("Could not enqueue notification %s: %s; the next check will.", notification_pk, exc)


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


def enqueue_deliveries(notification_pks: list[int]) -> None:
    """Queue these sends in one transaction (one commit, not one each: SQLite has a single writer)."""
    try:
        with transaction.atomic():
            for pk in notification_pks:
                deliver.enqueue(pk)
    except DatabaseError as exc:
        logger.warning("Could not enqueue %s notification(s): %s; the next check will.", len(notification_pks), exc)


def lost_deliveries() -> None:
    """Enqueue again the notifications whose task never came (lost enqueue, killed worker): the claim makes a
    duplicate harmless."""
    stale = timezone.now() - timedelta(minutes=15)
    waiting = Notification.objects.filter(state=State.PENDING, created_at__lte=stale, busy_until__isnull=True)
    expired = Notification.objects.filter(state=State.PENDING, busy_until__lte=stale)
    for pk in list(waiting.values_list("pk", flat=True)[:100]) + list(expired.values_list("pk", flat=True)[:100]):
        enqueue_delivery(pk)
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
