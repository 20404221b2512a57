"""What the API answers, as schemas (they make the OpenAPI document) and the functions that fill them from rows."""

from __future__ import annotations

from datetime import datetime

from ninja import Schema

from batches import pricing
from batches.lineage_keys import LineageState
from batches.models import Batch, BatchSnapshot


class ErrorBody(Schema):
    code: str
    message: str
    details: dict | list | None = None


class ErrorOut(Schema):
    error: ErrorBody


# Every operation may answer these; 413 is any body over the limit (batches.middleware), whatever the address.
ERRORS = {code: ErrorOut for code in (400, 401, 403, 404, 409, 413, 429)}
# What an operation that may ask the OpenAI API answers when it fails (502) or cannot be asked (503).
UPSTREAM_ERRORS = {code: ErrorOut for code in (502, 503)}


class RequestCounts(Schema):
    total: int
    completed: int
    failed: int


class Usage(Schema):
    input_tokens: int | None
    cached_input_tokens: int | None
    output_tokens: int | None


class Lineage(Schema):
    retry_of: str = ""
    job: str = ""
    attempt: int = 0
    verified: bool = False
    state: str = ""
    part_of: str = ""  # a split file's job (its first part's id; /api/v1/jobs/{id}); "" for a batch sent whole
    part: int = 0
    parts: int = 0


class BatchOut(Schema):
    id: str
    connection: str
    status: str
    endpoint: str
    model: str
    description: str
    input_file_id: str
    output_file_id: str
    error_file_id: str
    created_at: datetime
    expires_at: datetime | None
    finished_at: datetime | None
    request_counts: RequestCounts
    usage: Usage
    metadata: dict[str, str]
    cancel_requested_at: datetime | None
    lineage: Lineage


class FailureGroup(Schema):
    outcome: str = ""
    status: int | None = None
    code: str = ""
    message: str = ""
    count: int = 0


class BatchDetailOut(BatchOut):
    cost_usd: str | None
    results: str  # the state of the results kept locally ("ready", "requested"…), "" when none are kept
    failure_groups: list[FailureGroup]


class BatchPage(Schema):
    data: list[BatchOut]
    has_more: bool
    next_cursor: str | None


class SnapshotOut(Schema):
    observed_at: datetime
    status: str
    request_counts: RequestCounts


class TimelineOut(Schema):
    id: str
    data: list[SnapshotOut]


class CancelOut(Schema):
    result: str  # "cancelled" (this request asked the API) or "already" (a cancel was asked before)
    batch: BatchOut


class BulkCancelIn(Schema):
    batch_ids: list[str]


class BulkCancelItem(Schema):
    id: str
    result: str  # "cancelled", "already" or "error"
    error: str


class BulkCancelOut(Schema):
    data: list[BulkCancelItem]
    cancelled: int
    already: int
    error: int


class JobRef(Schema):
    """A file over the API's limits, sent as the parts of one job: the job's id (its first part's) and every part."""

    id: str
    parts: list[str]
    part_count: int


class CreateOut(Schema):
    repeated: bool  # the Idempotency-Key had made this batch (every part) already: nothing was sent this time
    batch: BatchOut  # the batch, or a split file's first part
    job: JobRef | None = None  # a split file's job; null for a file sent as one batch


class JobPartOut(Schema):
    part: int
    batch: BatchOut


class JobOut(Schema):
    """A job: the batches a file was sent as (its parts: one for a file within the API's limits) and the retries of
    each, with the whole file's progress and cost."""

    id: str
    connection: str
    part_count: int
    parts: list[JobPartOut]
    missing_parts: list[int]  # part numbers not known to this dashboard (not sent, or not seen yet)
    retries: list[str]
    request_counts: RequestCounts  # over the parts
    finished: bool  # every part and retry is final
    cost: float | None  # dollars over every part and retry priced; null when no usage is reported yet
    cost_complete: bool  # every batch with usage has a known price


class JobCancelItem(Schema):
    id: str
    result: str
    error: str


class JobCancelOut(Schema):
    job: str
    results: list[JobCancelItem]  # one per batch that was running


def job_ref(outcome) -> dict | None:
    if not outcome.is_job:
        return None
    return {
        "id": outcome.parts[0].batch_id,
        "parts": [p.batch_id for p in outcome.parts],
        "part_count": outcome.part_count,
    }


def job_out(job) -> dict:
    """JobOut of a retries.merged.Job: one query for its cost."""
    numbered = [(root.part or 1, root) for root in job.roots]
    known = {number for number, _root in numbered}
    total, completed, failed = job.request_counts
    cost = job.cost_total()
    return {
        "id": job.job_id,
        "connection": job.batches[0].connection.slug,
        "part_count": job.part_count,
        "parts": [{"part": number, "batch": batch_out(root)} for number, root in numbered],
        "missing_parts": [number for number in range(1, job.part_count + 1) if number not in known],
        "retries": [batch.batch_id for batch in job.retries],
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "finished": not job.running,
        "cost": float(cost.amount) if cost.batches else None,
        "cost_complete": cost.complete,
    }


def batch_out(batch: Batch) -> dict:
    return {
        "id": batch.batch_id,
        "connection": batch.connection.slug,
        "status": batch.status,
        "endpoint": batch.endpoint,
        "model": batch.model,
        "description": batch.description,
        "input_file_id": batch.input_file_id,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "expires_at": batch.expires_at,
        "finished_at": batch.finished_at,
        "request_counts": {
            "total": batch.total_requests,
            "completed": batch.completed_requests,
            "failed": batch.failed_requests,
        },
        "usage": {
            "input_tokens": batch.input_tokens,
            "cached_input_tokens": batch.cached_input_tokens,
            "output_tokens": batch.output_tokens,
        },
        "metadata": {str(key): str(value) for key, value in (batch.metadata or {}).items()},
        "cancel_requested_at": batch.cancel_requested_at,
        "lineage": {
            "retry_of": batch.retry_of,
            "job": batch.job,
            "attempt": batch.attempt,
            "verified": batch.lineage_state == LineageState.VERIFIED,
            "state": batch.lineage_state,
            "part_of": batch.part_of,
            "part": batch.part,
            "parts": batch.parts,
        },
    }


def batch_detail_out(batch: Batch, archive) -> dict:
    cost = pricing.usage_cost(batch.model, batch.input_tokens, batch.cached_input_tokens, batch.output_tokens)
    groups = (archive.summary.get("groups") or []) if archive is not None else []
    return {
        **batch_out(batch),
        "cost_usd": str(cost) if cost is not None else None,
        "results": archive.state if archive is not None else "",
        "failure_groups": [
            {key: group.get(key) for key in ("outcome", "status", "code", "message", "count") if key in group}
            for group in groups
            if isinstance(group, dict)
        ],
    }


def snapshot_out(snapshot: BatchSnapshot) -> dict:
    return {
        "observed_at": snapshot.observed_at,
        "status": snapshot.status,
        "request_counts": {
            "total": snapshot.total_requests,
            "completed": snapshot.completed_requests,
            "failed": snapshot.failed_requests,
        },
    }
