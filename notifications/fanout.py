"""Which destinations hear of an event, and the one Notification row per (event, batch, destination) that makes it
exactly once: whichever path (the sync loop, a webhook, a page's refresh) records the change first, its reaction
inserts the row, and only an inserted row enqueues a send. Every later insert hits the unique constraint.

Cost: one query for the subscriptions that may match a batch (by scope, on indexed columns), one for the creators of
the batch when a "batches I created" subscription exists, one per distinct destination owner for what they may view,
one for the rows that exist already, one INSERT for the new ones (per 500) and one SELECT of their ids; then one send
task per destination that has none queued yet (notifications.delivery sends a destination's waiting notifications in
a loop), queued in one transaction. A paused destination's rows are inserted held, and logged as such.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction
from django.db.models import Q

from audit.models import Action, AuditEvent, Outcome
from batches.lineage_keys import LineageState
from batches.models import Batch, Connection
from notifications.models import (
    FINISHED_FIELDS,
    Attempt,
    Destination,
    Notification,
    Scope,
    State,
    Step,
    Subscription,
)

logger = logging.getLogger("batches.notifications")

FAILURES = "failures"
EXPIRING = "expiring"
STUCK_PREFIX = "stuck:"
FINISHED_PREFIX = "finished:"
INSERT_CHUNK = 500
BUDGET_PREFIX = "budget"  # budget80:2026-12 / budget100:2026-12
JOB_COMPLETE = "job_complete"  # notifications.jobs: a job's final results, all retries done


def finished_events(batch: Batch) -> list[str]:
    """The events of a batch that became final: its final status, and "failures" when some requests failed (each
    subscription compares the share with its own threshold)."""
    events = []
    if batch.status in FINISHED_FIELDS:
        events.append(FINISHED_PREFIX + batch.status)
    if batch.status == "completed" and batch.failed_requests:
        events.append(FAILURES)
    return events


def wants(subscription: Subscription, event: str, batch: Batch | None) -> bool:
    """Whether the subscription asked for this event (and, for failures, whether the share passes its threshold)."""
    if event.startswith(FINISHED_PREFIX):
        return getattr(subscription, FINISHED_FIELDS[event.removeprefix(FINISHED_PREFIX)])
    if event == FAILURES:
        total = batch.total_requests or 0
        return (
            subscription.on_failures
            and total > 0
            and batch.failed_requests * 100 > subscription.failure_percent * total
        )
    if event.startswith(STUCK_PREFIX):
        return subscription.on_stuck
    if event == EXPIRING:
        return subscription.on_expiring
    if event.startswith(BUDGET_PREFIX):
        return subscription.on_budget
    if event == JOB_COMPLETE:
        return subscription.on_job_complete
    return False


def subscriptions_for_batch(batch: Batch) -> list[Subscription]:
    """The subscriptions whose scope covers `batch` (a paused destination's too: its events are held): one query (two
    with creators)."""
    jobs = [batch.batch_id]
    if batch.job and batch.lineage_state == LineageState.VERIFIED:
        jobs.append(batch.job)
    covers = (
        Q(scope=Scope.BATCH, batch=batch.pk)
        | Q(scope=Scope.JOB, connection=batch.connection_id, job__in=jobs)
        | Q(scope=Scope.CONNECTION, connection=batch.connection_id)
        | (
            Q(scope=Scope.FILTER)
            & (Q(connection__isnull=True) | Q(connection=batch.connection_id))
            & Q(endpoint__in=["", batch.endpoint])
            & Q(model__in=["", batch.model])
        )
    )
    candidates = Subscription.objects.select_related("destination")
    if Subscription.objects.filter(scope=Scope.MINE).exists():
        creators = AuditEvent.objects.filter(
            action=Action.CREATE, outcome=Outcome.OK, batch_id=batch.batch_id, connection=batch.connection_id
        ).values("user")
        covers |= Q(scope=Scope.MINE, created_by__in=creators)
    return [subscription for subscription in candidates.filter(covers) if subscription.matches_metadata(batch)]


def subscriptions_for_connection(connection: Connection) -> list[Subscription]:
    """Subscriptions to a connection's own events (its budget): everything of it, or a filter on it."""
    covers = Q(scope=Scope.CONNECTION, connection=connection.pk) | Q(scope=Scope.FILTER, connection=connection.pk)
    return list(Subscription.objects.filter(covers).select_related("destination"))


def notify_batch(batch: Batch, events: list[str]) -> int:
    """Insert the notifications of these events of `batch` for every destination that asked and whose owner may
    see the batch; enqueue each send once its row is committed. Returns how many rows this call inserted."""
    if not events:
        return 0
    subscriptions = subscriptions_for_batch(batch)
    return _insert(subscriptions, events, batch=batch, connection_id=batch.connection_id)


def notify_connection(connection: Connection, event: str) -> int:
    return _insert(subscriptions_for_connection(connection), [event], batch=None, connection_id=connection.pk)


def _insert(subscriptions: list[Subscription], events: list[str], *, batch, connection_id: int) -> int:
    from notifications.tasks import enqueue_sends

    viewable: dict[tuple, set[int]] = {}  # per owner (a user or a team): one query each, however many destinations
    chosen: dict[tuple[str, int], Destination] = {}
    for subscription in subscriptions:
        destination = subscription.destination
        owner = (destination.user_id, destination.team_id)
        if owner not in viewable:
            viewable[owner] = destination.viewable_connection_ids()
        if connection_id not in viewable[owner]:
            continue
        for event in events:
            if wants(subscription, event, batch):
                chosen.setdefault((event, destination.pk), destination)
    for event, destination_pk in list(chosen):
        if event == FAILURES:  # one message per batch: "completed with failures" says "completed" too
            chosen.pop((FINISHED_PREFIX + "completed", destination_pk), None)
    if not chosen:
        return 0
    rows = Notification.objects.filter(
        event__in={event for event, _pk in chosen}, destination__in={pk for _event, pk in chosen}, is_test=False
    )
    rows = rows.filter(batch=batch) if batch is not None else rows.filter(batch=None, connection=connection_id)
    missing = set(chosen) - set(rows.values_list("event", "destination"))
    if not missing:
        return 0
    # One INSERT for all, skipping a row another path inserted meanwhile (the unique constraint decides); then the
    # rows of these keys still untouched are queued, one send task per destination. Should a path racing this one
    # queue the same destination, the second task finds nothing to claim. A paused destination's rows are held.
    paused = {key[1] for key in missing if chosen[key].paused_at}
    Notification.objects.bulk_create(
        [
            Notification(
                destination_id=pk,
                batch=batch,
                connection_id=connection_id,
                event=event,
                state=State.HELD if pk in paused else State.PENDING,
            )
            for event, pk in missing
        ],
        ignore_conflicts=True,
        batch_size=INSERT_CHUNK,
    )
    untouched = rows.filter(state__in=[State.PENDING, State.HELD], tries=0, attempts__isnull=True)
    fresh = [
        (pk, destination)
        for pk, event, destination in untouched.values_list("pk", "event", "destination")
        if (event, destination) in missing
    ]
    held = [pk for pk, destination in fresh if destination in paused]
    if held:
        Attempt.objects.bulk_create(
            (Attempt(notification_id=pk, ok=False, step=Step.HELD) for pk in held), batch_size=INSERT_CHUNK
        )
    sending = {destination for _pk, destination in fresh if destination not in paused}
    transaction.on_commit(partial(enqueue_sends, sending))
    logger.info(
        "%s notification(s) of %s, %s held",
        len(fresh),
        batch.batch_id if batch else f"connection {connection_id}",
        len(held),
    )
    return len(fresh)
