"""The API's one error shape, {"error": {"code", "message", "details"}}, and the handlers that give every failure it."""

from __future__ import annotations

import json
import math
import time

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from ninja.errors import AuthenticationError, HttpError, ValidationError

from batches.views.common import AmbiguousBatch

CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "rate_limited",
    502: "upstream_error",
    503: "unavailable",
}


class ApiError(Exception):
    """A failure to answer with `status` in the one shape; `headers` are added (Retry-After)."""

    def __init__(self, status: int, message: str, *, code: str = "", details=None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers or {}


def rate_limited(message: str) -> ApiError:
    """A 429 whose Retry-After is the seconds left in the current minute (the window budget.allow_user counts in)."""
    retry_after = max(1, math.ceil(60 - time.time() % 60))
    return ApiError(429, message, headers={"Retry-After": str(retry_after)})


def error_response(status: int, message: str, *, code: str = "", details=None, headers=None) -> JsonResponse:
    body = {"error": {"code": code or CODES.get(status, "error"), "message": message, "details": details}}
    response = JsonResponse(body, status=status, json_dumps_params={"default": str})
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _api_error(request, exc: ApiError):
    return error_response(exc.status, exc.message, code=exc.code, details=exc.details, headers=exc.headers)


def _validation(request, exc: ValidationError):
    # Made JSON-safe here: pydantic's errors may hold the exception that caused them.
    details = json.loads(json.dumps(exc.errors, default=str))
    return error_response(400, "The request's parameters are not valid.", details=details)


def _authentication(request, exc: AuthenticationError):
    message = (
        "Send a live API token as “Authorization: Bearer bb_…”, or sign in (with a CSRF token to change anything)."
    )
    return error_response(401, message, headers={"WWW-Authenticate": 'Bearer realm="batchboard"'})


def _not_found(request, exc: Http404):
    return error_response(404, str(exc) or "Not found.")


def _forbidden(request, exc: PermissionDenied):
    return error_response(403, str(exc) or "You may not do this.")


def _http_error(request, exc: HttpError):
    return error_response(exc.status_code, str(exc.message))


def _ambiguous(request, exc: AmbiguousBatch):
    slugs = sorted(batch.connection.slug for batch in exc.batches)
    message = f"{exc.batch_id} is a batch in more than one of your connections: add ?connection= with one of them."
    return error_response(409, message, code="ambiguous_batch", details={"connections": slugs})


def install(api) -> None:
    for exception, handler in (
        (ApiError, _api_error),
        (ValidationError, _validation),
        (AuthenticationError, _authentication),
        (Http404, _not_found),
        (PermissionDenied, _forbidden),
        (HttpError, _http_error),
        (AmbiguousBatch, _ambiguous),
    ):
        api.add_exception_handler(exception, handler)
