"""The API's operations on a batch's job and files: retry lines of a batch (the retry page's selections, through its
code: retries.confirm), the job's final results merged across its retries (retries.merged, and the final page's
exports), and the batch's input, output and error files (streamed as the detail page streams them)."""

from __future__ import annotations

import uuid
from typing import Literal

from django.conf import settings
from django.core import signing
from django.http import QueryDict
from ninja import Field, Query, Router, Schema
from ninja.responses import Status

from api import schemas
from api.auth import require_scope
from api.common import checked_id, visible_batch
from api.errors import ApiError, rate_limited
from api.models import CANCEL, CREATE, READ
from batches import access, actions, events, services
from batches.views.common import existing_batch_connection
from batches.views.detail import FileUnavailable, file_download
from results.archive import request_archive
from retries import cancel, confirm, merged, submit
from retries import views as retries_views
from retries.models import MAX_AUTO_RETRIES
from retries.selection import CHOICES, FILTER, RetrySelection

router = Router()
ERRORS = {**schemas.ERRORS, **schemas.UPSTREAM_ERRORS}
IDEMPOTENCY_NAMESPACE = uuid.UUID("0b8f5a53-9d0e-4a47-8e35-51b7f7f1c2a4")
MAX_IDEMPOTENCY_KEY = 255
DEFAULT_LIMIT, MAX_LIMIT = 100, 500
CURSOR_SALT = "api.v1.final.cursor"
EXPORT_BODY = {"description": "The export, streamed", "content": {"text/csv": {}, "application/jsonl": {}}}
SELECTIONS = (*CHOICES, FILTER)  # the retry page's named choices, and its results filter
FILE_BODY = {"description": "The file, streamed as the API keeps it", "content": {"application/jsonl": {}}}


# --- Retrying ---------------------------------------------------------------------------------------------------


class RetryIn(Schema):
    select: Literal[SELECTIONS]
    # With select=filter, the results page's filter (at least one of them): the lines it shows are retried.
    outcome: str = ""
    code: str = ""
    status: str = ""
    group: str = ""
    q: str = ""
    completion_window: Literal[services.COMPLETION_WINDOWS] = services.COMPLETION_WINDOWS[0]
    auto_retries: int = Field(0, ge=0, le=MAX_AUTO_RETRIES)  # automatic retries of the retry's transient failures


class RetryOut(Schema):
    repeated: bool  # the Idempotency-Key had made this retry already: nothing was sent this time
    lines: int  # the lines the retry sends
    selection: str  # the lines chosen, in words
    batch: schemas.BatchOut


def _retry_token(request, parent, key: str) -> str:
    """The retry's form token: from the Idempotency-Key, the same for the same user, batch and key (and never the
    token of a create sent with the same key), else a new one."""
    if not key:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{request.user.pk}:{parent.connection_id}:{parent.batch_id}:{key}"))


def _not_created(outcome: actions.CreateOutcome) -> ApiError:
    if outcome.error == actions.CREATE_LIMITED.format(limit=settings.BATCHBOARD_USER_CREATE_LIMIT):
        return rate_limited(outcome.error)
    if outcome.conflict:
        message = "This Idempotency-Key is in use by a request still being answered; try again in a moment."
        return ApiError(409, message, code="idempotency_conflict")
    return ApiError(502, outcome.error)


@router.post(
    "/batches/{batch_id}/retry",
    response={200: RetryOut, 201: RetryOut, **ERRORS},
    summary="Retry lines of a batch",
    tags=["batches"],
)
def retry_batch(request, batch_id: str, body: RetryIn):
    """Send some lines of a finished batch again, as a new batch of its job: `select` one of the retry page's
    choices (`failed`, `unanswered`, `unrun`, `missing`, `transient`), or `filter` with the results page's filter
    (`outcome`, `code`, `status`, `group`, `q`). Needs the `create` scope and your team's create grant on the batch's
    connection. The input lines are sent byte for byte as kept. 409 when its results are not kept or nothing is
    selected; an `Idempotency-Key` header makes retrying the request safe (200, `repeated`)."""
    require_scope(request, CREATE)
    connection = existing_batch_connection(request, checked_id(batch_id))  # another team's batch is a 404
    if not access.may(request.user, access.CREATE, connection):
        confirm.audit_refused(request, batch_id)
        raise ApiError(403, "You may not create batches on this connection, so you may not retry lines either.")
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, f"The Idempotency-Key is at most {MAX_IDEMPOTENCY_KEY} characters.")
    parent = visible_batch(request, batch_id)
    archive = request_archive(parent)
    if archive is None or not archive.is_ready:
        state = archive.state if archive is not None else ""
        message = f"The results of {batch_id} are not kept locally, so none of its lines can be retried yet."
        raise ApiError(409, message, code="results_not_ready", details={"state": state, "batch_status": parent.status})
    fields = QueryDict(mutable=True)
    for name, value in body.dict().items():
        if value not in ("", None):
            fields[name] = str(value)
    selection = RetrySelection.from_query(fields)
    if selection is None:
        message = "select=filter needs a filter of the results: outcome, code, status, group or q."
        raise ApiError(400, message, code="invalid_selection")
    options, problems = confirm.options_of(fields)
    prepared = submit.prepare(parent, archive, selection, token=_retry_token(request, parent, key), **options)
    sent = confirm.send(request, prepared, selection, problems)
    if sent.refused:
        if problems:
            raise ApiError(400, problems[0], details={"problems": problems})
        if not prepared.lines:
            message = f"Nothing to retry: {batch_id} has no line that is {selection.label.removeprefix('every ')}."
            raise ApiError(409, message, code="nothing_to_retry")
        raise ApiError(400, "The retry's input is not valid.", details={"problems": prepared.error_messages})
    outcome = sent.outcome
    if outcome.batch is None:
        raise _not_created(outcome)
    answer = {
        "repeated": outcome.repeated,
        "lines": prepared.lines,
        "selection": selection.label,
        "batch": schemas.batch_out(outcome.batch),
    }
    return Status(200 if outcome.repeated else 201, answer)


# --- The job's final results ----------------------------------------------------------------------------------


class FinalRow(Schema):
    line_number: int | None  # the line of the original input
    custom_id: str
    outcome: str  # the final outcome: succeeded in some batch of the job, else the last failure
    status_code: int | None
    error_code: str
    error_message: str
    batch: str | None  # the batch whose answer this is
    from_retry: bool


class FinalPage(Schema):
    job: str
    batches: list[str]  # the job's batches, the original first
    pending: list[str]  # retries whose results are not kept (yet): not counted
    total: int
    succeeded: int
    failing: dict[str, int]  # final outcome -> lines, of the lines still without an answer
    data: list[FinalRow]
    has_more: bool
    next_cursor: str | None


class FinalParams(Schema):
    show: Literal["all", "failing"] = "all"
    limit: int = DEFAULT_LIMIT
    cursor: str = ""


def _kept_job(request, batch_id: str):
    batch = visible_batch(request, batch_id)
    job = merged.job_of(batch)
    if job.root_archive is None:
        message = f"The results of {job.job_id}, the original batch of this job, are not kept locally (yet)."
        raise ApiError(409, message, code="results_not_ready", details={"job": job.job_id})
    return batch, job


def _final_row(row: merged.MergedRow) -> dict:
    line = row.line
    return {
        "line_number": row.line_number,  # in the whole input file, across a split file's parts
        "custom_id": row.original.custom_id,
        "outcome": line.outcome,
        "status_code": line.status_code,
        "error_code": line.error_code,
        "error_message": line.error_message,
        "batch": row.batch.batch_id if row.batch else None,
        "from_retry": row.from_retry,
    }


@router.get(
    "/batches/{batch_id}/final", response={200: FinalPage, **ERRORS}, summary="A job's final results", tags=["jobs"]
)
def final_rows(request, batch_id: str, params: Query[FinalParams]):
    """For each line of the job's original input, in input order, the answer that succeeded in any batch of the job
    (the original and its retries), else the last failure; `show=failing` gives the lines still without an answer.
    Any batch of the job names it. 409 while the original's results are not kept."""
    require_scope(request, READ)
    if not 1 <= params.limit <= MAX_LIMIT:
        raise ApiError(400, f"limit is between 1 and {MAX_LIMIT}.", details={"limit": params.limit})
    _batch, job = _kept_job(request, batch_id)
    lines = merged.merged_lines(job, params.show)
    if params.cursor:
        try:
            archive_id, after = (int(value) for value in signing.loads(params.cursor, salt=CURSOR_SALT))
            lines = merged.lines_after(job, lines, archive_id, after)  # a split file's parts, in order
        except (signing.BadSignature, ValueError, TypeError):
            raise ApiError(400, "The cursor is not one this API gave out.", code="invalid_cursor") from None
    chunk = list(lines[: params.limit + 1])
    has_more = len(chunk) > params.limit
    chunk = chunk[: params.limit]
    counts = merged.counts(job)
    return {
        "job": job.job_id,
        "batches": [batch.batch_id for batch in job.batches],
        "pending": [batch.batch_id for batch in job.pending],
        "total": counts.total,
        "succeeded": counts.succeeded,
        "failing": counts.failing,
        "data": [_final_row(row) for row in merged.rows_for(job, chunk)],
        "has_more": has_more,
        "next_cursor": signing.dumps([chunk[-1].archive_id, chunk[-1].position], salt=CURSOR_SALT)
        if has_more
        else None,
    }


def _final_export(request, batch_id: str, fmt: str):
    require_scope(request, READ)
    batch, job = _kept_job(request, batch_id)
    return retries_views.export_download(request, batch, job, fmt)


@router.get(
    "/batches/{batch_id}/final/export.csv",
    response=ERRORS,
    summary="Export a job's final results as CSV",
    tags=["jobs"],
    openapi_extra={"responses": {"200": EXPORT_BODY}},
)
def final_csv(request, batch_id: str, show: Literal["all", "failing"] = "all"):
    """The final page's CSV export (`show=failing` for the lines still without an answer), streamed."""
    return _final_export(request, batch_id, "csv")


@router.get(
    "/batches/{batch_id}/final/export.jsonl",
    response=ERRORS,
    summary="Export a job's final results as JSONL",
    tags=["jobs"],
    openapi_extra={"responses": {"200": EXPORT_BODY}},
)
def final_jsonl(request, batch_id: str, show: Literal["all", "failing"] = "all"):
    """Each original line's place, final outcome and the batch that gave it, with the input line and the chosen
    result line exactly as stored, streamed."""
    return _final_export(request, batch_id, "jsonl")


# --- Files ------------------------------------------------------------------------------------------------------


@router.get(
    "/batches/{batch_id}/files/{kind}",
    response=ERRORS,
    summary="Download a batch's file",
    tags=["batches"],
    openapi_extra={"responses": {"200": FILE_BODY}},
)
def batch_file(request, batch_id: str, kind: Literal["input", "output", "error"]):
    """The batch's input, output or error file, streamed from the API through batchboard (no API key needed). 404
    when the batch has no such file or the API no longer has it; 429 past your downloads' limit."""
    require_scope(request, READ)
    batch = visible_batch(request, batch_id)
    try:
        return file_download(request, batch, kind)
    except FileUnavailable as exc:
        details = {"file_id": exc.file_id} if exc.file_id else None
        raise ApiError(exc.status, exc.message, details=details) from None


# --- A job: the batches a file was sent as, with their retries ------------------------------------------------


@router.get("/jobs/{batch_id}", response={200: schemas.JobOut, **ERRORS}, summary="A job", tags=["jobs"])
def job_detail(request, batch_id: str):
    """The job of a batch (any of its batches' ids): the parts a file was sent as (one for a file within the Batch
    API's limits; a split file's parts carry `batchboard_job`, `batchboard_part`, `batchboard_parts`), the retries of
    each, the whole file's progress and cost."""
    require_scope(request, READ)
    return schemas.job_out(merged.job_of(visible_batch(request, batch_id)))


@router.post(
    "/jobs/{batch_id}/cancel", response={200: schemas.JobCancelOut, **ERRORS}, summary="Cancel a job", tags=["jobs"]
)
def job_cancel(request, batch_id: str):
    """Cancel every running batch of the job (its parts and their retries): needs the `cancel` scope and your team's
    cancel grant on its connection. Each batch's outcome is listed, one audited cancel each; nothing running is no
    error."""
    require_scope(request, CANCEL)
    connection = existing_batch_connection(request, checked_id(batch_id))
    if not access.may(request.user, access.CANCEL, connection):
        events.note_action(request, events.CANCEL, events.REFUSED, batch_id=batch_id, detail="no permission to cancel")
        raise ApiError(403, "You may not cancel batches of this connection.")
    job = merged.job_of(visible_batch(request, batch_id))
    outcomes = cancel.cancel_running(request, job, connection)
    results = [{"id": batch_id, "result": outcome.result, "error": outcome.error} for batch_id, outcome in outcomes]
    return {"job": job.job_id, "results": results}
