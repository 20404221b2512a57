"""The JSON API, version 1: batches listed, read, cancelled and created, as the pages do and through the same code.

Each operation checks the token's scope (api.auth.require_scope) and then asks what the pages ask: the batches a user
may see (batches.access), the batch's connection (batches.views.common: another team's batch is a 404 word for word
like a missing one), the cancel and create actions (batches.actions), and the audit (batches.events.note_action).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from django.conf import settings
from django.core import signing
from django.db.models import Q
from django.http import QueryDict
from ninja import NinjaAPI, Query, Schema
from ninja.renderers import JSONRenderer
from ninja.responses import Status

from api import common, errors, schemas
from api.auth import AUTH, require_scope
from api.errors import ApiError
from api.jobs import router as jobs_router
from api.models import CANCEL, CREATE, READ
from api.results import router as results_router
from batches import access, actions, events, services
from batches.forms import CreateBatchForm, metadata_field_names
from batches.models import Batch
from batches.views.cancel import AUDIT_OUTCOMES, audit_bulk, cancel_selected, selected_ids
from batches.views.common import existing_batch_connection, visible_batch_connection
from batches.views.create import audit_create, create_from_form, first_problem
from batches.views.listing import parse_filters
from results.models import ResultArchive

DEFAULT_LIMIT, MAX_LIMIT = 50, 100
# The list is paged by keyset on (created_at, batch_id, pk), so it sorts by creation only: the other sorts of the
# list page have no stable position to continue from.
API_SORTS = {"-created": ("-created_at", "-batch_id", "-pk"), "created": ("created_at", "batch_id", "pk")}
CURSOR_SALT = "api.v1.batches.cursor"
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c7c53-5b0e-4c55-9a43-2f5d3c7b9e10")
MAX_IDEMPOTENCY_KEY = 255
ERRORS = schemas.ERRORS

api = NinjaAPI(
    title="batchboard API",
    version="1",
    description="Batches of the OpenAI Batch API, as batchboard keeps them. Authenticate with a personal access "
    "token (Authorization: Bearer bb_…) made on the API tokens page.",
    auth=AUTH,
    urls_namespace="api",
    docs_url=None,  # ninja's docs load from a CDN; api.views.docs is a plain page instead
    openapi_url="/openapi.json",
    renderer=JSONRenderer(),
)
errors.install(api)


# --- Listing ----------------------------------------------------------------------------------------------------


class ListParams(Schema):
    status: str = ""
    connection: str = ""
    endpoint: str = ""
    model: str = ""
    q: str = ""
    created_from: str = ""
    created_to: str = ""
    jobs: str = ""
    job: str = ""
    sort: str = "-created"
    limit: int = DEFAULT_LIMIT
    cursor: str = ""


def _cursor(batch: Batch, sort: str) -> str:
    return signing.dumps([sort, batch.created_at.isoformat(), batch.batch_id, batch.pk], salt=CURSOR_SALT)


def _after_cursor(batches, cursor: str, sort: str):
    try:
        cursor_sort, created, batch_id, pk = signing.loads(cursor, salt=CURSOR_SALT)
        created = datetime.fromisoformat(created)
    except (signing.BadSignature, ValueError, TypeError):
        raise ApiError(400, "The cursor is not one this API gave out.", code="invalid_cursor") from None
    if cursor_sort != sort:
        raise ApiError(400, "The cursor belongs to another sort order.", code="invalid_cursor")
    later, bound = ("lt", "lte") if sort.startswith("-") else ("gt", "gte")
    # The plain bound lets the (created_at, batch_id) index seek to the position; the OR then settles the ties.
    return batches.filter(**{f"created_at__{bound}": created}).filter(
        Q(**{f"created_at__{later}": created})
        | Q(created_at=created, **{f"batch_id__{later}": batch_id})
        | Q(created_at=created, batch_id=batch_id, **{f"pk__{later}": pk})
    )


@api.get("/batches", response={200: schemas.BatchPage, **ERRORS}, summary="List batches", tags=["batches"])
def list_batches(request, params: Query[ListParams]):
    """The batches you may see, newest first (or `sort=created`), with the list page's filters: `status` (a status,
    `active`, `attention` or `failed-lines`), `connection` (a slug), `endpoint`, `model`, `q` (words and
    `key:value` metadata terms), `created_from`/`created_to` (YYYY-MM-DD), `jobs=originals`, `job` (a batch id).
    Paged by `cursor`: pass the `next_cursor` of one page to get the next."""
    require_scope(request, READ)
    if not 1 <= params.limit <= MAX_LIMIT:
        raise ApiError(400, f"limit is between 1 and {MAX_LIMIT}.", details={"limit": params.limit})
    if params.sort not in API_SORTS:
        raise ApiError(
            400, "The API sorts by creation only: sort is -created or created.", details={"sort": params.sort}
        )
    query = QueryDict(mutable=True)
    for name in ("status", "connection", "endpoint", "model", "q", "created_from", "created_to", "jobs", "job"):
        if value := getattr(params, name):
            query[name] = value
    viewable = access.connections(request.user)
    filters, notices = parse_filters(query, viewable)
    if notices:
        raise ApiError(400, notices[0], details={"problems": notices})
    chosen = next((connection for connection in viewable if connection.slug == filters.connection), None)
    batches = (
        access.visible_batches(request.user)
        .matching(
            connection_id=chosen.pk if chosen else None,
            endpoint=filters.endpoint,
            model=filters.model,
            q=filters.q,
            created_range=filters.created_range,
            originals=filters.jobs == "originals",
            job=filters.job,
        )
        .with_status(filters.status)
        .order_by(*API_SORTS[params.sort])
        .defer("payload", "search_text")
        .select_related("connection")
    )
    if params.cursor:
        batches = _after_cursor(batches, params.cursor, params.sort)
    rows = list(batches[: params.limit + 1])
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    return {
        "data": [schemas.batch_out(row) for row in rows],
        "has_more": has_more,
        "next_cursor": _cursor(rows[-1], params.sort) if has_more else None,
    }


# --- Cancelling several (before the routes of one batch: "cancel" would read as an id) -------------------


@api.post(
    "/batches/cancel", response={200: schemas.BulkCancelOut, **ERRORS}, summary="Cancel several", tags=["batches"]
)
def cancel_batches(request, body: schemas.BulkCancelIn):
    """Cancel up to 100 batches, each on its own connection; one failure does not stop the others. Each id gets its
    own result; an id you may not cancel is reported as unknown. An id in two of your connections is given as
    `connection-slug/batch_id`; a slug of a connection you may not cancel on refuses the whole request (400)."""
    require_scope(request, CANCEL)
    if not access.connections(request.user, access.CANCEL):
        events.note_action(request, events.CANCEL, events.REFUSED, target="bulk", detail="no permission to cancel")
        raise ApiError(403, "You may not cancel batches.")
    batch_ids, problem = selected_ids(body.batch_ids, request.user)
    if problem:
        audit_bulk(request, [], problem)
        raise ApiError(400, problem)
    results = cancel_selected(request, batch_ids)
    audit_bulk(request, results, "")
    tally = {"cancelled": 0, "already": 0, "error": 0}
    for _batch_id, outcome in results:
        tally[outcome.result] += 1
    items = [{"id": batch_id, "result": outcome.result, "error": outcome.error} for batch_id, outcome in results]
    return {"data": items, **tally}


# --- One batch --------------------------------------------------------------------------------------------------


@api.get("/batches/{batch_id}", response={200: schemas.BatchDetailOut, **ERRORS}, summary="A batch", tags=["batches"])
def batch_detail(request, batch_id: str):
    """Every field of the batch, its connection, its lineage (retry of, job, verified), its cost at the price table's
    prices, and the failure groups of its results when they are kept. `?connection=slug` picks one batch when the id
    is in two of your connections."""
    require_scope(request, READ)
    batch = common.visible_batch(request, batch_id)
    archive = ResultArchive.objects.filter(batch=batch).first()
    return schemas.batch_detail_out(batch, archive)


@api.get(
    "/batches/{batch_id}/timeline",
    response={200: schemas.TimelineOut, **ERRORS},
    summary="A batch's timeline",
    tags=["batches"],
)
def batch_timeline(request, batch_id: str):
    """Each distinct state the batch was seen in, oldest first."""
    require_scope(request, READ)
    connection = visible_batch_connection(request, common.checked_id(batch_id))
    batch = Batch.objects.filter(connection=connection, batch_id=batch_id).only("pk", "batch_id").first()
    if batch is None:
        raise ApiError(404, f"There is no batch {batch_id}.")
    snapshots = batch.snapshots.order_by("observed_at", "pk").defer("payload")
    return {"id": batch.batch_id, "data": [schemas.snapshot_out(snapshot) for snapshot in snapshots]}


# --- Cancelling -------------------------------------------------------------------------------------------------


@api.post("/batches/{batch_id}/cancel", response={200: schemas.CancelOut, **ERRORS}, summary="Cancel", tags=["batches"])
def cancel_batch(request, batch_id: str):
    """Cancel the batch (once, however often asked): needs the `cancel` scope and your team's cancel grant on its
    connection. 409 when it has finished already or the API refused."""
    require_scope(request, CANCEL)
    connection = existing_batch_connection(request, common.checked_id(batch_id))  # another team's batch is a 404
    if not access.may(request.user, access.CANCEL, connection):
        events.note_action(request, events.CANCEL, events.REFUSED, batch_id=batch_id, detail="no permission to cancel")
        raise ApiError(403, "You may not cancel batches of this connection.")
    outcome = actions.cancel_batch(batch_id, user=request.user.get_username(), connection=connection)
    events.note_action(request, events.CANCEL, AUDIT_OUTCOMES[outcome.result], batch_id=batch_id, detail=outcome.error)
    if outcome.error:
        details = {"batch": schemas.batch_out(outcome.batch)} if outcome.batch is not None else None
        raise ApiError(409, outcome.error, code="not_cancelled", details=details)
    return {"result": outcome.result, "batch": schemas.batch_out(outcome.batch)}


# --- Creating ---------------------------------------------------------------------------------------------------

CREATE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "input_file": {"type": "string", "format": "binary", "description": "A JSONL file to upload."},
                    "input_file_id": {"type": "string", "description": "Or a file uploaded with purpose batch."},
                    "connection": {"type": "string", "description": "The slug of a connection you may create on."},
                    "endpoint": {"type": "string", "enum": list(services.ENDPOINTS)},
                    "completion_window": {"type": "string", "enum": list(services.COMPLETION_WINDOWS)},
                    "description": {"type": "string"},
                    "metadata": {"type": "string", "description": "A JSON object of string keys and values."},
                    "output_expires_after_hours": {"type": "integer", "minimum": 1, "maximum": 720},
                },
            }
        }
    },
}


def _form_data(request, idempotency_key: str) -> QueryDict:
    """The create form's fields from the API's: the connection by slug, metadata as pairs, the form token from the
    Idempotency-Key (the same key of the same user is the same token, hence the same batch)."""
    data = QueryDict(mutable=True)
    for name in ("input_file_id", "endpoint", "completion_window", "description"):
        if name in request.POST:
            data[name] = request.POST[name]
    data.setdefault("completion_window", services.COMPLETION_WINDOWS[0])
    data["output_expiry_unit"] = "hours"
    creatable = access.connections(request.user, access.CREATE)
    if slug := request.POST.get("connection", ""):
        data["connection"] = next((str(c.pk) for c in creatable if c.slug == slug), "0")
    if hours := request.POST.get("output_expires_after_hours", ""):
        data["output_expiry_amount"] = hours
    for number, (key, value) in enumerate(_metadata(request.POST.get("metadata", "")).items(), start=1):
        if number > services.METADATA_MAX_PAIRS:
            raise ApiError(400, f"metadata holds at most {services.METADATA_MAX_PAIRS} pairs.")
        key_name, value_name = metadata_field_names(number)
        data[key_name], data[value_name] = key, value
    if idempotency_key:
        data["token"] = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{request.user.pk}:{idempotency_key}"))
    else:
        data["token"] = str(uuid.uuid4())
    return data


def _metadata(raw: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ApiError(400, "metadata is a JSON object of string keys and string values.")
    return value


def _form_errors(form: CreateBatchForm) -> dict:
    report = form.report
    return {
        "fields": {name: [str(message) for message in messages] for name, messages in form.errors.items()},
        "lines": [{"line": line, "message": message} for line, message in (report.line_problems if report else [])],
        "line_error_count": report.line_error_count if report else 0,
        "file_errors": list(report.file_errors) if report else [],
    }


@api.post(
    "/batches",
    response={200: schemas.CreateOut, 201: schemas.CreateOut, **ERRORS, 413: schemas.ErrorOut},
    summary="Create a batch",
    tags=["batches"],
    openapi_extra={"requestBody": CREATE_BODY},
)
def create_batch(request):
    """Create a batch from a JSONL upload (`input_file`) or an uploaded file id, validated as the create page does:
    nothing is sent when anything is wrong, and the problems come back by line. Send an `Idempotency-Key` header to
    make retrying safe: the same key gives the same batch (200, `repeated`) instead of a second one.

    An upload over the Batch API's limits (50,000 requests or 200 MB; up to BATCHBOARD_MAX_UPLOAD_BYTES) is split on
    line boundaries and sent as the parts of one job (`job`: its id and parts; `batch` is the first part). When a
    part fails to send, the answer (502) names the parts sent in `details`; the same request with the same
    Idempotency-Key sends the rest, never a part twice."""
    require_scope(request, CREATE)
    creatable = access.connections(request.user, access.CREATE)
    if not creatable:
        events.note_action(request, events.CREATE, events.REFUSED, detail="no permission to create")
        raise ApiError(403, "You may not create batches.")
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, f"The Idempotency-Key is at most {MAX_IDEMPOTENCY_KEY} characters.")
    form = CreateBatchForm(_form_data(request, key), request.FILES, connections=creatable, split=True)
    if not form.is_valid():
        audit_create(request, form, events.REFUSED, detail=first_problem(form))
        raise ApiError(400, "The batch was not created: " + first_problem(form), details=_form_errors(form))
    outcome = create_from_form(request, form)
    if outcome.batch is not None:
        answer = {
            "repeated": outcome.repeated,
            "batch": schemas.batch_out(outcome.batch),
            "job": schemas.job_ref(outcome),
        }
        return Status(200 if outcome.repeated else 201, answer)
    details = {"uploaded_file_id": outcome.uploaded_file_id} if outcome.uploaded_file_id else None
    if outcome.is_job:
        details = {"part_count": outcome.part_count, "sent_parts": [part.batch_id for part in outcome.parts]}
    if actions.CREATE_LIMITED.format(limit=settings.BATCHBOARD_USER_CREATE_LIMIT) in outcome.error:  # a part's too
        raise errors.rate_limited(outcome.error)
    if outcome.conflict:
        message = "This Idempotency-Key is in use by a request still being answered; try again in a moment."
        raise ApiError(409, message, code="idempotency_conflict")
    status = 400 if outcome.error_field == "input_file_id" else 502
    raise ApiError(status, outcome.error, details=details)


# Added last: the results', the job's and the files' routes sit under /batches/{batch_id}/, after the batch's own.
api.add_router("", results_router)
api.add_router("", jobs_router)
