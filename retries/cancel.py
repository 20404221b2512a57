"""Cancel job: every running batch of a job (a split file's parts and their retries, or a batch and its retries)."""

from __future__ import annotations

from audit.log import record
from audit.models import Action
from audit.models import Outcome as AuditOutcome
from batches import actions
from batches.models import Connection
from retries.merged import Job


def cancel_running(request, job: Job, connection: Connection) -> list[tuple[str, actions.CancelOutcome]]:
    """Cancel each batch of the job that is not final (once each, however often asked: batches.actions), each
    audited as a cancel by the request's user; one failure does not stop the others. Cost: one upstream call per
    running batch."""
    user = request.user.get_username()
    outcomes = []
    for batch in job.running:
        outcome = actions.cancel_batch(batch.batch_id, user=user, connection=connection)
        record(
            request,
            Action.CANCEL,
            AuditOutcome.ERROR if outcome.error else AuditOutcome.OK,
            batch_id=batch.batch_id,
            target=f"job {job.job_id}",
            detail=outcome.error,
            connection=connection.pk,
        )
        outcomes.append((batch.batch_id, outcome))
    return outcomes
