"""Who retried whom: a batch's job (its original batch and every verified retry), its retries, its cost.

The claims are columns of Batch, written by the one recording function from the metadata (batches.lineage_keys);
retries.verify decides whether a claim counts. Only verified retries are in a job, its cost and its final results.
"""

from __future__ import annotations

from dataclasses import dataclass

from batches import pricing
from batches.lineage_keys import LineageState
from batches.models import Batch


def chain(job_batch_id: str, connection_id: int | None = None):
    """The job's batches (in its connection): its original and its verified retries."""
    return Batch.objects.in_job(job_batch_id, connection_id)


@dataclass(frozen=True)
class Lineage:
    """What the detail page says about a batch's place in its job."""

    parent_id: str
    parent_known: bool
    state: str
    note: str
    job_id: str
    retried_by: list[str]
    retries_in_job: int
    job_cost: pricing.CostTotal | None

    @property
    def is_retry(self) -> bool:
        return bool(self.parent_id) and self.state == LineageState.VERIFIED

    @property
    def claims_retry(self) -> bool:
        """The metadata names a parent, but the lines have not been shown to be the parent's (yet)."""
        return bool(self.parent_id) and self.state != LineageState.VERIFIED

    @property
    def not_verified_because(self) -> str:
        """Why the claim does not count, in words: "not verified: its lines are not X's"."""
        if self.state == LineageState.NOT_MATCHING:
            return f"not verified: {self.note or f"its lines are not {self.parent_id}'s"}"
        return f"not verified yet: {self.note or 'waiting for both inputs to be kept'}"

    @property
    def has_retries(self) -> bool:
        return bool(self.retries_in_job)


def lineage(batch: Batch) -> Lineage:
    """At most four small queries: the parent's existence, the direct retries, the job's size and its cost."""
    job_id = batch.job_id
    # in_connections, not filter(connection_id=...): SQLite, without statistics, would seek the connection's index
    # and read every batch of it (200 ms at 100,000) instead of the retry_of and job indexes.
    same_connection = Batch.objects.in_connections([batch.connection_id])
    retried_by = list(
        same_connection.filter(retry_of=batch.batch_id, lineage_state=LineageState.VERIFIED)
        .order_by("created_at", "batch_id")
        .values_list("batch_id", flat=True)
    )
    retries_in_job = same_connection.retry_counts([job_id]).get(job_id, 0)
    parent_known = bool(batch.retry_of) and same_connection.filter(batch_id=batch.retry_of).exists()
    return Lineage(
        parent_id=batch.retry_of,
        parent_known=parent_known,
        state=batch.lineage_state,
        note=batch.lineage_note,
        job_id=job_id,
        retried_by=retried_by,
        retries_in_job=retries_in_job,
        job_cost=chain(job_id, batch.connection_id).cost_total() if retries_in_job else None,
    )
