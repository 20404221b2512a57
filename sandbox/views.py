"""The sandbox's HTTP surface: thin views that check parameters, call store.py and answer in the API's shapes.

Every request goes through `_api`: a request id, injected latency, the key that names the organisation asking
(sandbox/organisations.py), injected faults (read from settings at request time), that organisation's demo seed on
first use, and OpenAI's error envelope for every failure.
The same API answers at two paths (sandbox/urls.py): /sandbox/v1/ as OpenAI, with `Authorization: Bearer <key>`, and
/sandbox/openai/v1/ as Azure OpenAI's v1 API, with `api-key: <key>`; there a bearer token is accepted too, as Azure
accepts an Entra ID token, and checked as a key (the `api-key` header wins when both come). A missing or wrong key
is a 401 in OpenAI's envelope on both paths, with Azure's wording on Azure's (code "401", as Azure sends); an
`api-version` query parameter is accepted and ignored, as the v1 API does.
Choices where the reference is silent: an unknown `after` cursor gives an empty page; a wrong method or path gives
404 "Invalid URL (...)" as the live API does; 500s and 503s are both used for injected server errors;
OpenAI-Organization / OpenAI-Project headers are accepted and ignored (the key alone names the organisation); a body
too large or malformed to parse is a 400; POST /files with a body that is not multipart/form-data is a 400 naming
the Content-Type (the wording is the sandbox's); file content is served as application/octet-stream whatever the
Accept header (the SDK sends application/binary).
Deliberate differences from the live API: the x-ratelimit-* headers come only with an injected 429, not on every
response; files never leave the `processed` status.
The metadata key `sandbox_scenario` ("expire", "slow", "all_fail", "token_limit") steers a batch's simulated fate,
for demos and tests; it is echoed back like any other metadata.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import secrets
import time

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import SuspiciousOperation
from django.http import FileResponse, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from sandbox import api, clock, organisations, params, seed, store, uploads
from sandbox.api import ApiError
from sandbox.rules import BATCHES_LIST_LIMIT_DEFAULT, BATCHES_LIST_LIMIT_MAX, FILES_LIST_LIMIT_MAX
from sandbox.uploads import DiskUploadHandler

logger = logging.getLogger(__name__)

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from https://platform.openai.com/account/api-keys."
)
AZURE_MISSING_KEY_MESSAGE = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an "
    "API."
)
AZURE_WRONG_KEY_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)

# --- Plumbing shared by every endpoint ---------------------------------------


def _masked(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return "*" * (len(key) - 4) + key[-4:]


def _bearer_key(request) -> str:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _authenticate(request, flavour: str) -> str:
    """The organisation whose key the request carries, in the header the path's flavour expects."""
    if flavour == "azure":
        key = request.headers.get("api-key", "").strip() or _bearer_key(request)
        if not key:
            raise ApiError(401, AZURE_MISSING_KEY_MESSAGE, code="401")
        organisation = organisations.by_key(key)
        if organisation is None:
            raise ApiError(401, AZURE_WRONG_KEY_MESSAGE, code="401")
        return organisation
    key = _bearer_key(request)
    if not key:
        raise ApiError(401, MISSING_KEY_MESSAGE)
    organisation = organisations.by_key(key)
    if organisation is None:
        raise ApiError(
            401,
            f"Incorrect API key provided: {_masked(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    return organisation


# Injected faults draw from their own generator, so a test can seed it and get the same faults every run.
fault_draws = random.Random()


def _injected_fault(organisation: str) -> ApiError | None:
    if fault_draws.random() < settings.SANDBOX_RATE_LIMIT_RATE:
        wait = settings.SANDBOX_RETRY_AFTER
        reset = f"{round(wait * 1000)}ms" if wait < 1 else f"{wait:g}s"
        return ApiError(
            429,
            f"Rate limit reached for requests in organization {organisation} on requests per min (RPM): Limit 1000, "
            f"Used 1000, Requested 1. Please try again in {reset}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            type="requests",
            code="rate_limit_exceeded",
            headers={
                # Whole seconds, at least one, as the spec says; the SDK prefers the exact retry-after-ms.
                "retry-after": str(max(math.ceil(wait), 1)),
                "retry-after-ms": str(round(wait * 1000)),
                "x-ratelimit-limit-requests": "1000",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": reset,
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "199856",
                "x-ratelimit-reset-tokens": "43ms",
            },
        )
    if fault_draws.random() < settings.SANDBOX_ERROR_RATE:
        if fault_draws.random() < 0.25:
            return ApiError(503, "The engine is currently overloaded, please try again later.", type="server_error")
        return ApiError(
            500,
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )
    return None


def _api(view):
    """Wrap a view as an endpoint of the simulated API: the view gets the organisation asking after the request.

    `flavour` comes from the URLconf: "openai" or "azure", the way the key is sent.
    """

    @functools.wraps(view)
    def endpoint(request, *args, flavour, **kwargs):
        request_id = "req_" + secrets.token_hex(16)
        try:
            if settings.SANDBOX_LATENCY:
                time.sleep(settings.SANDBOX_LATENCY)
            organisation = _authenticate(request, flavour)
            fault = _injected_fault(organisation)
            if fault:
                raise fault
            if any("\x00" in value for value in kwargs.values()):
                raise _invalid_url(request)  # No id holds a NUL, and PostgreSQL cannot even compare one.
            if settings.SANDBOX_SEED:
                seed.ensure_seeded(organisation)
            response = view(request, organisation, *args, **kwargs)
        except (SuspiciousOperation, MultiPartParserError, UnreadablePostError):
            # An oversized JSON body, too many form fields, a malformed multipart body, or a client gone mid-way.
            response = JsonResponse(
                api.error_json("The request body is too large or malformed.", "invalid_request_error"), status=400
            )
        except ApiError as error:
            response = JsonResponse(error.body(), status=error.status)
            for name, value in error.headers.items():
                response[name] = value
        except Exception:
            logger.exception("Sandbox request %s failed", request_id)
            response = JsonResponse(
                api.error_json("The server had an error while processing your request.", "server_error"), status=500
            )
        response["x-request-id"] = request_id
        return response

    return login_not_required(csrf_exempt(endpoint))


def _invalid_url(request) -> ApiError:
    path = request.path.removeprefix("/sandbox")
    return ApiError(404, f"Invalid URL ({request.method} {path})")


# --- Files ------------------------------------------------------------------


@_api
def file_collection(request, organisation):
    if request.method == "GET":
        return _list_files(request, organisation)
    if request.method == "POST":
        return _upload_file(request, organisation)
    raise _invalid_url(request)


def _list_files(request, organisation):
    limit = params.int_param(request.GET, "limit", FILES_LIST_LIMIT_MAX, 1, FILES_LIST_LIMIT_MAX)
    order = request.GET.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise params.invalid_value("order", order, ["asc", "desc"])
    files, has_more = store.list_files(
        now=clock.now(),
        organisation=organisation,
        purpose=request.GET.get("purpose") or None,
        limit=limit,
        order=order,
        after=request.GET.get("after") or None,
    )
    return JsonResponse(api.list_json([api.file_json(file) for file in files], has_more))


def _upload_file(request, organisation):
    if request.content_type != "multipart/form-data":
        raise ApiError(
            400, f"Invalid Content-Type header ({request.content_type or 'none'}), expected multipart/form-data."
        )
    now = clock.now()
    store.purge_expired(now)
    usage = store.storage_used()
    handler = DiskUploadHandler(request, store.files_dir(), room=settings.SANDBOX_STORAGE_QUOTA - usage)
    try:
        fields, files = handler.parse()  # streams the file to disk
        if handler.too_large:
            raise ApiError(400, "File is too large.")
        if handler.over_quota:
            raise store.over_quota(usage)
        purpose, expires_after = params.upload_fields(fields)
        upload = files.get("file")
        if upload is None:
            raise params.missing("file")
        if purpose == "batch" and not upload.name.lower().endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        if upload.size > uploads.size_limit(purpose):  # the purpose came after the file, too late for the handler
            raise ApiError(400, "File is too large.")
        file = store.store_file(
            upload.path,
            organisation=organisation,
            filename=upload.name,
            purpose=purpose,
            now=now,
            expires_after=expires_after,
        )
        return JsonResponse(api.file_json(file))
    finally:
        handler.cleanup()


@_api
def file_detail(request, organisation, file_id):
    if request.method == "GET":
        return JsonResponse(api.file_json(store.get_file(file_id, clock.now(), organisation)))
    if request.method == "DELETE":
        store.delete_file(file_id, clock.now(), organisation)
        return JsonResponse(api.deleted_json(file_id))
    raise _invalid_url(request)


@_api
def file_content(request, organisation, file_id):
    if request.method != "GET":
        raise _invalid_url(request)
    file = store.get_file(file_id, clock.now(), organisation)
    try:
        handle = open(file.path, "rb")  # noqa: SIM115 - FileResponse streams and closes it
    except FileNotFoundError:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None
    return FileResponse(handle, content_type="application/octet-stream", filename=file.filename)


# --- Batches ----------------------------------------------------------------


@_api
def batch_collection(request, organisation):
    if request.method == "GET":
        limit = params.int_param(request.GET, "limit", BATCHES_LIST_LIMIT_DEFAULT, 1, BATCHES_LIST_LIMIT_MAX)
        observed, has_more = store.list_batches(
            now=clock.now(), organisation=organisation, limit=limit, after=request.GET.get("after") or None
        )
        return JsonResponse(api.list_json([api.batch_json(batch, state) for batch, state in observed], has_more))
    if request.method == "POST":
        return _create_batch(request, organisation)
    raise _invalid_url(request)


def _create_batch(request, organisation):
    wanted = params.batch_request(request.body)
    now = clock.now()
    input_file = store.batch_input_file(wanted.pop("input_file_id"), now, organisation)
    batch = store.create_batch(
        input_file=input_file,
        now=now,
        speed=settings.SANDBOX_SPEED,
        scenario=(wanted["metadata"] or {}).get(store.SCENARIO_KEY, ""),
        **wanted,
    )
    batch, state = store.observe(batch, now)
    return JsonResponse(api.batch_json(batch, state))


@_api
def batch_detail(request, organisation, batch_id):
    if request.method != "GET":
        raise _invalid_url(request)
    batch, state = store.observe(store.get_batch(batch_id, organisation), clock.now())
    return JsonResponse(api.batch_json(batch, state))


@_api
def batch_cancel(request, organisation, batch_id):
    if request.method != "POST":
        raise _invalid_url(request)
    batch, state = store.cancel_batch(batch_id, clock.now(), organisation)
    return JsonResponse(api.batch_json(batch, state))


@_api
def unknown_route(request, organisation, path=""):
    raise _invalid_url(request)
