"""The API's results endpoints: the rows of a batch's kept results with the results page's filters, one row with its
request and answer, and the CSV and JSONL exports (the results app's own, streamed)."""

from __future__ import annotations

from django.core import signing
from django.http import QueryDict
from ninja import Query, Router, Schema

from api import schemas
from api.auth import require_scope
from api.common import visible_batch
from api.errors import ApiError
from api.models import READ
from results import views as results_views
from results.archive import StoredFiles, loads_record, request_archive
from results.models import ResultArchive, ResultFilter, ResultLine
from results.rows import MAX_POSITION, RENDER_BYTES

router = Router(tags=["results"])
DEFAULT_LIMIT, MAX_LIMIT = 100, 500
CURSOR_SALT = "api.v1.results.cursor"
# A request or an answer longer than this is not parsed into the answer (an embedding can be megabytes): the JSONL
# export has it byte for byte.
RECORD_BYTES = RENDER_BYTES
ROW_FIELDS = (
    "position",
    "line_number",
    "custom_id",
    "outcome",
    "status_code",
    "error_code",
    "error_message",
    "error_group",
    "input_tokens",
    "output_tokens",
    "prompt",
    "preview",
    "duplicate",
)
EXPORT_BODY = {"description": "The export, streamed", "content": {"text/csv": {}, "application/jsonl": {}}}


class ResultRow(Schema):
    position: int
    line_number: int | None
    custom_id: str
    outcome: str
    status_code: int | None
    error_code: str
    error_message: str
    error_group: int | None
    input_tokens: int | None
    output_tokens: int | None
    prompt: str
    preview: str
    duplicate: bool


class ResultPage(Schema):
    data: list[ResultRow]
    has_more: bool
    next_cursor: str | None


class ResultDetail(ResultRow):
    request: dict | None  # the input line, parsed; null when not kept or longer than RECORD_BYTES
    result: dict | None  # the output or error line, parsed; null likewise
    cut: bool  # a side was left out for its size: the JSONL export has it


class ResultParams(Schema):
    outcome: str = ""
    code: str = ""
    status: str = ""
    group: str = ""
    q: str = ""
    limit: int = DEFAULT_LIMIT
    cursor: str = ""


def _ready_archive(request, batch_id: str) -> ResultArchive:
    """The batch's kept results; a 409 saying their state while they are not kept (yet)."""
    batch = visible_batch(request, batch_id)
    archive = request_archive(batch)  # asked for now when the batch is final and has none, as the page does
    if archive is None or not archive.is_ready:
        state = archive.state if archive is not None else ""
        message = f"The results of {batch_id} are not kept locally" + (
            f" ({archive.get_state_display()})." if state else "."
        )
        raise ApiError(409, message, code="results_not_ready", details={"state": state, "batch_status": batch.status})
    archive.batch = batch
    return archive


def _row(line: ResultLine) -> dict:
    return {name: getattr(line, name) for name in ROW_FIELDS}


@router.get(
    "/batches/{batch_id}/results",
    response={200: ResultPage, **schemas.ERRORS},
    summary="A batch's results",
)
def result_rows(request, batch_id: str, params: Query[ResultParams]):
    """The rows of the batch's kept results in input order, with the results page's filters: `outcome`
    (succeeded, failed, expired, cancelled, missing), `code` (an error code), `status` (an HTTP status), `group`
    (a failure group's number), `q` (any part of the custom_id; the request's and answer's text by any part on
    SQLite, by whole words, every one in any order, on PostgreSQL). 409 while the results are not kept."""
    require_scope(request, READ)
    if not 1 <= params.limit <= MAX_LIMIT:
        raise ApiError(400, f"limit is between 1 and {MAX_LIMIT}.", details={"limit": params.limit})
    query = QueryDict(mutable=True)
    for name in ("outcome", "code", "status", "group", "q"):
        if value := getattr(params, name):
            query[name] = value
    result_filter = ResultFilter.from_query(query)
    if result_filter.ignored:
        raise ApiError(400, f"Not a filter of the results: {', '.join(result_filter.ignored)}.")
    archive = _ready_archive(request, batch_id)
    lines = archive.lines.matching(result_filter).in_order().only(*ROW_FIELDS)
    if params.cursor:
        try:
            after = int(signing.loads(params.cursor, salt=CURSOR_SALT))
        except (signing.BadSignature, ValueError, TypeError):
            raise ApiError(400, "The cursor is not one this API gave out.", code="invalid_cursor") from None
        lines = lines.filter(position__gt=after)
    rows = list(lines[: params.limit + 1])
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    cursor = signing.dumps(rows[-1].position, salt=CURSOR_SALT) if has_more else None
    return {"data": [_row(line) for line in rows], "has_more": has_more, "next_cursor": cursor}


@router.get(
    "/batches/{batch_id}/results/{int:position}",
    response={200: ResultDetail, **schemas.ERRORS},
    summary="One request and its answer",
)
def result_row(request, batch_id: str, position: int):
    """One row of the results: its request line and its answer (the output or error line), parsed."""
    require_scope(request, READ)
    archive = _ready_archive(request, batch_id)
    line = archive.lines.filter(position=position).first() if position <= MAX_POSITION else None
    if line is None:
        raise ApiError(404, f"{batch_id} has no row {position} in its results.")
    cut = False
    sides = {}
    with StoredFiles(archive) as files:
        for name, kind, offset, length in (
            ("request", "input", line.input_offset, line.input_length),
            ("result", line.result_kind, line.result_offset, line.result_length),
        ):
            too_long = length is not None and length > RECORD_BYTES
            cut = cut or too_long
            sides[name] = None if too_long else loads_record(files.read(kind, offset, length))
    return {**_row(line), **sides, "cut": cut}


@router.get(
    "/batches/{batch_id}/results/export.csv",
    response=schemas.ERRORS,
    summary="Export the results as CSV",
    openapi_extra={"responses": {"200": EXPORT_BODY}},
)
def export_csv(request, batch_id: str):
    """The results page's CSV export, with its filters, streamed."""
    require_scope(request, READ)
    _ready_archive(request, batch_id)
    return results_views.results_export(request, batch_id, "csv")


@router.get(
    "/batches/{batch_id}/results/export.jsonl",
    response=schemas.ERRORS,
    summary="Export the results as JSONL",
    openapi_extra={"responses": {"200": EXPORT_BODY}},
)
def export_jsonl(request, batch_id: str):
    """Each row's place and outcome with its input and result lines exactly as stored, streamed."""
    require_scope(request, READ)
    _ready_archive(request, batch_id)
    return results_views.results_export(request, batch_id, "jsonl")
