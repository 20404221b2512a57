"""The notifications app's reactions to the core's events (connected in NotificationsConfig.ready()): each only
schedules or enqueues, never sends in the recorder's thread."""

from __future__ import annotations

import logging

from django.core.cache import cache
from django.db import DatabaseError

from batches import reactions
from notifications import checks, jobs, tasks
from notifications.models import Subscription

logger = logging.getLogger("batches.notifications")

CHECK_KEY = "notifications:check"


def notify_when_final(sender, batch_pk: int, historical: bool, **kwargs) -> None:
    """A batch became final: fan it out to its subscribers, as a reaction. Not for an imported old batch (history
    is not news), nor while nobody subscribes to anything (one indexed EXISTS, instead of a reaction per batch)."""
    if not historical and Subscription.objects.exists():
        reactions.schedule(tasks.FINAL_STEP, batch_pk)


def check_on_housekeeping(sender, **kwargs) -> None:
    """Enqueue the periodic checks, at most once per CHECK_EVERY_SECONDS across every loop process."""
    if not cache.add(CHECK_KEY, 1, checks.CHECK_EVERY_SECONDS):
        return
    try:
        tasks.check_conditions.enqueue()
    except DatabaseError as exc:
        logger.warning("Could not enqueue the notification checks: %s", exc)


def notify_when_job_settles(sender, batch_pk: int, **kwargs) -> None:
    """A batch's results were kept: its job may be complete (notifications.jobs decides, as a reaction)."""
    if Subscription.objects.filter(on_job_complete=True).exists():
        reactions.schedule(jobs.JOB_STEP, batch_pk)
