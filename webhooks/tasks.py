"""The webhooks app's task (django.tasks, run by `manage.py db_worker`)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import DatabaseError
from django.tasks import task
from django.utils import timezone

from webhooks import processing

logger = logging.getLogger("batches.webhooks")


@task()
def process_delivery(delivery_pk: int) -> None:
    """Fetch and record the batch a webhook named, once: the delivery row is the claim."""
    again = processing.process(delivery_pk)
    if again is not None:
        enqueue_processing(delivery_pk, again)
    for lost_pk in processing.lost():
        enqueue_processing(lost_pk)


def enqueue_processing(delivery_pk: int, after: timedelta | None = None) -> None:
    """Queue the delivery's processing; a failure to enqueue is logged (the sync loop's next pass sees the change)."""
    run_after = timezone.now() + after if after else None
    try:
        process_delivery.using(run_after=run_after).enqueue(delivery_pk)
    except DatabaseError as exc:
        logger.warning("Could not enqueue webhook delivery %s: %s", delivery_pk, exc)
