"""Reactions: what must follow a batch's recorded state (keep its results, retry it), each run exactly once, as a task.

django.tasks with the django-tasks-db backend queues and runs tasks, but runs each enqueued task once, with no retry,
and a task whose worker is killed stays RUNNING forever. A Reaction row (batches.models.Reaction) adds what the
apps need on top of it:

- `schedule(step, batch_pk)` inserts the row for (batch, step, attempt); the unique constraint makes a second
  schedule a no-op, and only a new row enqueues the step's task (on commit, so a rolled-back recording schedules
  nothing).
- The task calls `run(reaction_id, body)`: a conditional UPDATE claims the row (pending and due, or running with an
  expired lease) for this worker only, so a duplicate enqueue or a second worker returns at once without running
  the body. The body succeeds (done), asks to wait (`raise Later(seconds, reason)`: no try counted), gives up at once
  (`raise Failed(reason)`), or raises: then it is retried with exponential backoff and jitter, up to MAX_TRIES, and
  recorded as failed with its reason. One reaction's failure never blocks another's.
- `wake(step, batch_pk)` runs a waiting reaction now, when what it waited for has happened (an event).
- `sweep()` (the sync loop's process calls it after each pass, and `serve`) puts back reactions whose worker died
  (expired lease) and re-enqueues pending ones whose task was lost; the claim makes a duplicate harmless.

A body may run again after a worker died halfway, so its effect must be idempotent (replace what it writes, or
check first): "exactly once" is the reaction's completion, and each app keeps its effect safe to repeat.

Cost: schedule is one INSERT (two with the task); a claim and a completion are one UPDATE each; sweep is two
indexed SELECTs when nothing is wrong, whatever the number of reactions.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.tasks import Task
from django.utils import timezone
from django_tasks_db.models import DBTaskResult, get_date_max

from batches import services
from batches.freshness import failure_message
from batches.models import Reaction, ReactionState

logger = logging.getLogger("batches.reactions")

MAX_TRIES = 6
# A body that runs longer than this without renew() is taken to be dead, and its reaction runs again elsewhere.
LEASE_SECONDS = 600.0
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0
# A pending reaction whose task has not claimed it this long after it was due is taken to have lost its task.
LOST_AFTER = timedelta(minutes=15)
ERROR_LENGTH = 1000
SWEEP_LIMIT = 500
# Readiness fails when a due task has waited this long: no worker runs (`manage.py db_worker`).
QUEUE_STALE_SECONDS = 600
# The sync loop's process sweeps at most this often.
SWEEP_EVERY_SECONDS = 30.0
# The task priority of a reaction someone is waiting for (a results page opened): ahead of the background's 0.
HURRY_PRIORITY = 50

_tasks: dict[str, Task] = {}


class Later(Exception):
    """Raised by a body that cannot run yet (upstream budget spent, import not finished): run again in `seconds`,
    without counting a try."""

    def __init__(self, seconds: float, reason: str = ""):
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


class Failed(Exception):
    """Raised by a body when trying again cannot help (a hostile file): the reaction is failed at once."""


def register(step: str, task: Task) -> None:
    """Map a step name to the task that runs it: apps call this in AppConfig.ready()."""
    _tasks[step] = task


def schedule(step: str, batch_pk: int, attempt: int = 0, *, priority: int = 0) -> bool:
    """Ask for `step` to follow batch `batch_pk`: True when this call created the reaction (its task is enqueued when
    the current transaction commits), False when it was asked for already. A higher `priority` runs it before the
    rest of the queue (someone is waiting for it)."""
    if step not in _tasks:
        raise LookupError(f"No task is registered for the reaction step {step!r}.")
    now = timezone.now()
    try:
        with transaction.atomic():
            reaction = Reaction.objects.create(
                batch_id=batch_pk, step=step, attempt=attempt, run_after=now, enqueued_at=now
            )
    except IntegrityError:
        return False
    _enqueue_on_commit(step, reaction.pk, priority=priority)
    return True


def wake(step: str, batch_pk: int, attempt: int = 0) -> bool:
    """Run a reaction that is waiting (after `raise Later`, or a backoff) now rather than at its run_after: what it
    waited for has happened. True when one was waiting; its task is enqueued when the current transaction commits."""
    now = timezone.now()
    waiting = Reaction.objects.filter(
        batch_id=batch_pk, step=step, attempt=attempt, state=ReactionState.PENDING, run_after__gt=now
    )
    reaction_id = waiting.values_list("pk", flat=True).first()
    if reaction_id is None or not waiting.filter(pk=reaction_id).update(run_after=now, enqueued_at=now):
        return False
    transaction.on_commit(partial(_enqueue, step, reaction_id))
    return True


def hurry(step: str, batch_pk: int, attempt: int = 0) -> bool:
    """Someone is waiting for this pending reaction: enqueue its task again ahead of the queue (the claim makes the
    copy that runs second a no-op). True when there was a pending reaction to hurry."""
    pending = Reaction.objects.filter(batch_id=batch_pk, step=step, attempt=attempt, state=ReactionState.PENDING)
    reaction_id = pending.values_list("pk", flat=True).first()
    if reaction_id is None:
        return False
    _enqueue_on_commit(step, reaction_id, priority=HURRY_PRIORITY)
    return True


def _enqueue_on_commit(step: str, reaction_id: int, *, priority: int = 0) -> None:
    """Enqueue the task once the current transaction commits: every reaction a transaction schedules (a page of
    batches turning final) in one write after it, not one each (SQLite has a single writer).

    The list is the connection's, for the transaction whose commit callbacks it was registered with; a rollback gives
    the connection a new callback list, and the next schedule starts a new batch. A reaction rolled back with a
    savepoint may still be enqueued: its task finds no reaction to claim and does nothing.
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        _enqueue(step, reaction_id, priority=priority)
        return
    batch = getattr(connection, "reactions_to_enqueue", None)
    if batch is None or batch.sent or batch.callbacks is not connection.run_on_commit:
        batch = connection.reactions_to_enqueue = _EnqueueBatch(connection.run_on_commit)
        transaction.on_commit(batch.send)
    batch.queued.append((step, reaction_id, priority))


@dataclass
class _EnqueueBatch:
    callbacks: list  # the connection's commit callbacks it was registered with
    queued: list[tuple[str, int, int]] = field(default_factory=list)
    sent: bool = False

    def send(self) -> None:
        self.sent = True
        try:
            with transaction.atomic():
                for step, reaction_id, priority in self.queued:
                    _enqueue(step, reaction_id, priority=priority)
        except DatabaseError as exc:
            logger.warning("Could not enqueue %s reaction(s): %s; the next sweep will.", len(self.queued), exc)


def _enqueue(step: str, reaction_id: int, run_after: datetime | None = None, *, priority: int = 0) -> None:
    """Put the step's task on the queue. A failure here is logged, not raised: sweep() enqueues it again later."""
    task = _tasks.get(step)
    if task is None:
        logger.error("No task is registered for the reaction step %r (reaction %s).", step, reaction_id)
        return
    try:
        task.using(run_after=run_after, priority=priority).enqueue(reaction_id)
    except DatabaseError as exc:
        logger.warning("Could not enqueue reaction %s (%s): %s; the next sweep will.", reaction_id, step, exc)


def run(reaction_id: int, body: Callable[[Reaction], object], *, lease_seconds: float = LEASE_SECONDS) -> bool:
    """Claim the reaction and run `body(reaction)` under the claim; True when this call ran it.

    Call it from the step's task. Returns False at once when the reaction is not claimable (done, failed, not due,
    or held by another worker): a re-enqueued task or a second worker is a no-op.
    """
    now = timezone.now()
    claimable = Q(state=ReactionState.PENDING, run_after__lte=now) | Q(state=ReactionState.RUNNING, lease_until__lt=now)
    claimed = Reaction.objects.filter(claimable, pk=reaction_id).update(
        state=ReactionState.RUNNING, tries=F("tries") + 1, lease_until=now + timedelta(seconds=lease_seconds)
    )
    if not claimed:
        return False
    reaction = Reaction.objects.select_related("batch").get(pk=reaction_id)
    reaction.lease_seconds = lease_seconds
    try:
        body(reaction)
    except Later as wait:
        run_after = timezone.now() + timedelta(seconds=max(wait.seconds, 0.0))
        _settle(reaction, ReactionState.PENDING, run_after=run_after, tries=F("tries") - 1, error=_bounded(wait.reason))
    except Failed as exc:
        logger.warning("Reaction %s failed: %s", _name(reaction), exc)
        _settle(reaction, ReactionState.FAILED, error=_bounded(str(exc)))
    except Exception as exc:
        reason = _reason(exc)
        if reaction.tries >= MAX_TRIES:
            logger.exception("Reaction %s failed after %s tries: %s", _name(reaction), reaction.tries, reason)
            _settle(reaction, ReactionState.FAILED, error=reason)
        else:
            logger.warning("Reaction %s failed (try %s of %s): %s", _name(reaction), reaction.tries, MAX_TRIES, reason)
            run_after = timezone.now() + backoff(reaction.tries)
            _settle(reaction, ReactionState.PENDING, run_after=run_after, error=reason)
    else:
        _settle(reaction, ReactionState.DONE, error="")
    return True


def renew(reaction: Reaction) -> bool:
    """Extend a long body's lease; False when the claim was lost (the lease expired and another worker took it)."""
    until = timezone.now() + timedelta(seconds=getattr(reaction, "lease_seconds", LEASE_SECONDS))
    held = Reaction.objects.filter(pk=reaction.pk, state=ReactionState.RUNNING, tries=reaction.tries)
    return bool(held.update(lease_until=until))


def backoff(tries: int) -> timedelta:
    """How long to wait after `tries` failed tries: 30 s, 1 min, 2 min … at most an hour, with up to 20 % jitter so
    that reactions failing together do not come back together."""
    seconds = min(BACKOFF_BASE_SECONDS * 2 ** max(tries - 1, 0), BACKOFF_MAX_SECONDS)
    return timedelta(seconds=seconds * random.uniform(1.0, 1.2))


def _settle(reaction: Reaction, state: str, **fields) -> None:
    """End this claim: only if it is still ours (`tries` names the claim), so a worker whose lease expired and was
    taken over never overwrites the new holder's outcome."""
    now = timezone.now()
    fields["lease_until"] = None
    if state in (ReactionState.DONE, ReactionState.FAILED):
        fields["finished_at"] = now
    if state == ReactionState.PENDING:
        fields["enqueued_at"] = now
    mine = Reaction.objects.filter(pk=reaction.pk, state=ReactionState.RUNNING, tries=reaction.tries)
    if not mine.update(state=state, **fields):
        logger.warning("Reaction %s was taken over by another worker; its outcome is theirs.", _name(reaction))
        return
    if state == ReactionState.PENDING:
        transaction.on_commit(partial(_enqueue, reaction.step, reaction.pk, fields["run_after"]))


def sweep(now: datetime | None = None) -> int:
    """Housekeeping for reactions whose task will not come: a running one whose lease expired (its worker was killed)
    goes back to pending, or to failed after MAX_TRIES claims; a pending one due for LOST_AFTER whose task never
    claimed it (an enqueue lost) is enqueued again. Returns how many were enqueued; at most SWEEP_LIMIT of each kind.
    """
    now = now or timezone.now()
    expired = Reaction.objects.filter(state=ReactionState.RUNNING, lease_until__lt=now)
    dead = list(expired.values_list("pk", "step", "tries")[:SWEEP_LIMIT])
    worn_out = [pk for pk, _step, tries in dead if tries >= MAX_TRIES]
    if worn_out:
        expired.filter(pk__in=worn_out).update(
            state=ReactionState.FAILED,
            finished_at=now,
            lease_until=None,
            error=f"Its worker stopped (killed or crashed) during each of {MAX_TRIES} tries.",
        )
    dead = [(pk, step) for pk, step, tries in dead if tries < MAX_TRIES]
    if dead:
        expired.filter(pk__in=[pk for pk, _step in dead]).update(
            state=ReactionState.PENDING, lease_until=None, enqueued_at=now
        )
    stale = now - LOST_AFTER
    lost_rows = Reaction.objects.filter(state=ReactionState.PENDING, run_after__lte=stale, enqueued_at__lte=stale)
    lost = list(lost_rows.order_by("run_after").values_list("pk", "step")[:SWEEP_LIMIT])
    if lost:
        lost_rows.filter(pk__in=[pk for pk, _step in lost]).update(enqueued_at=now)
    for pk, step in dead + lost:
        _enqueue(step, pk)
    if dead or lost:
        logger.info(
            "Swept reactions back onto the queue: %s whose worker stopped, %s whose task was lost.",
            len(dead),
            len(lost),
        )
    return len(dead) + len(lost)


def _reason(exc: Exception) -> str:
    """A failure in words, bounded; never the API key (the service module redacts it from its errors)."""
    if isinstance(exc, services.BatchApiError):
        return _bounded(failure_message(exc))
    return _bounded(f"{type(exc).__name__}: {exc}")


def _bounded(text: str) -> str:
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


def _name(reaction: Reaction) -> str:
    return f"{reaction.step} of {reaction.batch.batch_id}"


# --- The queue's health (read by /readyz and /metrics) ---------------------------


@dataclass(frozen=True)
class QueueStatus:
    waiting: int  # tasks due and not started
    oldest_waiting_seconds: float  # how long the task due longest has waited (0 when none waits)
    failed_last_hour: int  # tasks that crashed, and reactions that gave up, in the last hour

    @property
    def stuck(self) -> bool:
        """Tasks have waited so long that no worker can be running."""
        return self.oldest_waiting_seconds > QUEUE_STALE_SECONDS


def queue_status(now: datetime | None = None) -> QueueStatus:
    """Four small queries over the queue's indexes, whatever its size."""
    now = now or timezone.now()
    due = DBTaskResult.objects.ready()
    waiting = due.count()
    oldest = 0.0
    if waiting:
        undated = due.filter(run_after=get_date_max()).order_by("enqueued_at").values_list("enqueued_at", flat=True)
        dated = due.exclude(run_after=get_date_max()).order_by("run_after").values_list("run_after", flat=True)
        since = [moment for moment in (undated.first(), dated.first()) if moment is not None]
        oldest = max((now - min(since)).total_seconds(), 0.0) if since else 0.0
    hour_ago = now - timedelta(hours=1)
    crashed = DBTaskResult.objects.failed().filter(finished_at__gte=hour_ago).count()
    gave_up = Reaction.objects.filter(state=ReactionState.FAILED, finished_at__gte=hour_ago).count()
    return QueueStatus(waiting=waiting, oldest_waiting_seconds=oldest, failed_last_hour=crashed + gave_up)
