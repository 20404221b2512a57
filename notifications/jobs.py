"""The event "a job's final results are complete, with all retries done": once a batch's results are kept
(results.events.results_kept), and no automatic retry of it is coming (it asked for none, or the retries app decided
there was nothing to retry, or could not), and every batch of its job is final with its results kept, the job's
original batch is announced as JOB_COMPLETE to the subscribers of the job (or of any of its scopes).

Only for a job this install saw finish: a batch without the notify_final reaction (imported history, or a page that
kept an old batch's results on opening) announces nothing.
"""

from __future__ import annotations

from batches import reactions
from batches.lineage_keys import LineageState
from batches.models import Reaction, ReactionState
from notifications import fanout
from retries import auto, merged
from retries.models import AutoRetry, AutoRetryState

JOB_STEP = "notify_job"
JOB_COMPLETE = fanout.JOB_COMPLETE
WAIT_SECONDS = 60.0
FINAL_STEP = "notify_final"  # notifications.tasks.FINAL_STEP: the batch finished while this install watched


def job_of(batch) -> str:
    return batch.job if batch.job and batch.lineage_state == LineageState.VERIFIED else batch.batch_id


def fan_out_job(reaction) -> None:
    batch = reaction.batch
    if not Reaction.objects.filter(batch=batch, step=FINAL_STEP).exists():
        return
    if auto.retries_left(batch.metadata) > 0:
        decided = Reaction.objects.filter(
            batch=batch, step=auto.STEP, state__in=(ReactionState.DONE, ReactionState.FAILED)
        ).exists()
        if not decided:
            raise reactions.Later(WAIT_SECONDS, "waiting for the automatic retry's decision")
        outcome = AutoRetry.objects.filter(parent=batch).values_list("state", flat=True).first()
        if outcome in (AutoRetryState.SUBMITTED, AutoRetryState.FOUND):
            return  # a retry follows: its kept results settle the job
    job = merged.load_job(job_of(batch), batch.connection_id)
    if job.original is None or job.root_archive is None or job.pending:
        return
    if any(not member.is_terminal for member in job.batches):
        return
    fanout.notify_batch(job.original, [JOB_COMPLETE])


def final_counts(original) -> merged.Counts | None:
    """The job's merged counts (lines, and those still failing by outcome), for its message."""
    job = merged.load_job(original.batch_id, original.connection_id)
    return merged.counts(job) if job.root_archive is not None else None
