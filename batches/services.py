"""The Batch + Files API client: the only module that talks HTTP (auth, timeouts, retries, pagination, errors)."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import requests
from django.conf import settings

logger = logging.getLogger(__name__)

# --- What the API looks like ------------------------------------------------

STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE_STATUSES = frozenset({"validating", "in_progress", "finalizing"})
ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
COMPLETION_WINDOWS = ("24h",)
TIMESTAMP_FIELDS = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512
OUTPUT_EXPIRY_MIN_SECONDS = 3600
OUTPUT_EXPIRY_MAX_SECONDS = 2_592_000
LIST_LIMIT_MAX = 100
MAX_REQUESTS_PER_BATCH = 50_000
MAX_INPUT_FILE_BYTES = 200 * 1024 * 1024

RETRYABLE_STATUSES = frozenset({408, 409, 429})
RETRY_AFTER_CAP = 120.0
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def _file_id(value: Any) -> str | None:
    """The API sends null or "" for a missing file id; both mean none."""
    return value or None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- Typed results ----------------------------------------------------------


@dataclass(frozen=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0

    @classmethod
    def from_api(cls, data: dict | None) -> RequestCounts:
        data = data or {}
        return cls(
            total=_int(data.get("total")) or 0,
            completed=_int(data.get("completed")) or 0,
            failed=_int(data.get("failed")) or 0,
        )

    @property
    def processed(self) -> int:
        return self.completed + self.failed

    @property
    def fraction_done(self) -> float:
        return min(self.processed / self.total, 1.0) if self.total else 0.0


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_api(cls, data: dict | None) -> Usage | None:
        if not data:
            return None
        return cls(
            input_tokens=_int(data.get("input_tokens")) or 0,
            cached_tokens=_int((data.get("input_tokens_details") or {}).get("cached_tokens")) or 0,
            output_tokens=_int(data.get("output_tokens")) or 0,
            reasoning_tokens=_int((data.get("output_tokens_details") or {}).get("reasoning_tokens")) or 0,
            total_tokens=_int(data.get("total_tokens")) or 0,
        )


@dataclass(frozen=True)
class BatchError:
    code: str | None
    message: str | None
    param: str | None = None
    line: int | None = None

    @classmethod
    def from_api(cls, data: dict) -> BatchError:
        return cls(
            code=data.get("code"),
            message=data.get("message"),
            param=data.get("param"),
            line=_int(data.get("line")),
        )


@dataclass(frozen=True)
class Batch:
    id: str
    status: str
    endpoint: str | None
    input_file_id: str | None
    completion_window: str | None
    created_at: int
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    usage: Usage | None = None
    errors: tuple[BatchError, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_api(cls, data: dict) -> Batch:
        errors = data.get("errors") or {}
        status = str(data.get("status") or "").lower()  # Azure has sent "Validating"
        return cls(
            id=data["id"],
            status=status,
            endpoint=data.get("endpoint"),
            input_file_id=_file_id(data.get("input_file_id")),
            completion_window=data.get("completion_window"),
            created_at=_int(data.get("created_at")) or 0,
            model=data.get("model") or None,
            output_file_id=_file_id(data.get("output_file_id")),
            error_file_id=_file_id(data.get("error_file_id")),
            in_progress_at=_int(data.get("in_progress_at")),
            expires_at=_int(data.get("expires_at")),
            finalizing_at=_int(data.get("finalizing_at")),
            completed_at=_int(data.get("completed_at")),
            failed_at=_int(data.get("failed_at")),
            expired_at=_int(data.get("expired_at")),
            cancelling_at=_int(data.get("cancelling_at")),
            cancelled_at=_int(data.get("cancelled_at")),
            request_counts=RequestCounts.from_api(data.get("request_counts")),
            usage=Usage.from_api(data.get("usage")),
            errors=tuple(BatchError.from_api(e) for e in errors.get("data") or () if isinstance(e, dict)),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            raw=data,
        )

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.status)

    @property
    def is_cancellable(self) -> bool:
        return self.status in CANCELLABLE_STATUSES

    @property
    def file_ids(self) -> tuple[str, ...]:
        return tuple(f for f in (self.input_file_id, self.output_file_id, self.error_file_id) if f)


@dataclass(frozen=True)
class BatchPage:
    data: tuple[Batch, ...]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def from_api(cls, data: dict) -> BatchPage:
        batches = tuple(Batch.from_api(item) for item in data.get("data") or ())
        return cls(
            data=batches,
            has_more=bool(data.get("has_more")) and bool(batches),
            first_id=data.get("first_id") or None,
            last_id=data.get("last_id") or None,
        )


@dataclass(frozen=True)
class FileObject:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str | None = None
    expires_at: int | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_api(cls, data: dict) -> FileObject:
        return cls(
            id=data["id"],
            bytes=_int(data.get("bytes")) or 0,
            created_at=_int(data.get("created_at")) or 0,
            filename=data.get("filename") or "",
            purpose=data.get("purpose") or "",
            status=data.get("status"),
            expires_at=_int(data.get("expires_at")),
            raw=data,
        )


# --- Errors -----------------------------------------------------------------


class BatchApiError(Exception):
    """Any failure talking to the API. `message` is safe to show to a user."""

    def __init__(self, message, *, status=None, type=None, code=None, param=None, request_id=None, retry_after=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self):
        parts = [self.message]
        if self.status:
            parts.append(f"(HTTP {self.status}{', ' + self.code if self.code else ''})")
        if self.request_id:
            parts.append(f"[request {self.request_id}]")
        return " ".join(parts)


class BadRequest(BatchApiError):
    """The API rejected the request's parameters (400, 409, 413, 422)."""


class AuthenticationFailed(BatchApiError):
    """The key is missing, wrong or lacks permission (401, 403)."""


class NotFound(BatchApiError):
    """No such batch or file (404)."""


class RateLimited(BatchApiError):
    """429: too many requests or out of quota."""


class Unavailable(BatchApiError):
    """The API could not be reached, timed out, or answered 5xx."""


def _error_class(status: int) -> type[BatchApiError]:
    if status in (401, 403):
        return AuthenticationFailed
    if status == 404:
        return NotFound
    if status == 429:
        return RateLimited
    if status >= 500 or status == 408:
        return Unavailable
    if 400 <= status < 500:
        return BadRequest
    return BatchApiError


def _redact(text: str, secret: str) -> str:
    if secret and secret in text:
        text = text.replace(secret, "sk-…" + secret[-4:] if len(secret) > 8 else "[key]")
    return text


def _retry_after_seconds(response: requests.Response | None) -> float | None:
    """Seconds the server asks us to wait, from retry-after-ms or retry-after (seconds or an HTTP date)."""
    if response is None:
        return None
    raw_ms = response.headers.get("retry-after-ms")
    if raw_ms:
        try:
            return float(raw_ms) / 1000
        except ValueError:
            pass
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)


# --- The client -------------------------------------------------------------


class BatchClient:
    """A client of the Batch and Files API. Methods are named after the API's operations."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        organization: str = "",
        project: str = "",
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_retries: int = 2,
        session: requests.Session | None = None,
        sleep=time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = (connect_timeout, timeout)
        self.max_retries = max_retries
        self._sleep = sleep
        self.session = session or requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"batchboard/{getattr(settings, 'VERSION', '0')} (+python-requests)",
                "Accept": "application/json",
            }
        )
        if organization:
            self.session.headers["OpenAI-Organization"] = organization
        if project:
            self.session.headers["OpenAI-Project"] = project

    def __repr__(self):
        return f"<BatchClient {self.base_url}>"

    # Batches

    def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        output_expires_after: int | None = None,
    ) -> Batch:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            body["metadata"] = metadata
        if output_expires_after:
            body["output_expires_after"] = {"anchor": "created_at", "seconds": int(output_expires_after)}
        return Batch.from_api(self._request("POST", "/batches", json=body, idempotent=False).json())

    def retrieve_batch(self, batch_id: str) -> Batch:
        return Batch.from_api(self._request("GET", f"/batches/{batch_id}").json())

    def list_batches(self, *, after: str | None = None, limit: int = 20) -> BatchPage:
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"limit must be between 1 and {LIST_LIMIT_MAX}")
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return BatchPage.from_api(self._request("GET", "/batches", params=params).json())

    def iter_batch_pages(self, *, limit: int = LIST_LIMIT_MAX) -> Iterator[BatchPage]:
        """Every page of the list, newest first, following the `after` cursor as the SDK does."""
        after = None
        while True:
            page = self.list_batches(after=after, limit=limit)
            yield page
            if not page.has_more:
                return
            after = page.data[-1].id

    def iter_batches(self, *, limit: int = LIST_LIMIT_MAX) -> Iterator[Batch]:
        for page in self.iter_batch_pages(limit=limit):
            yield from page.data

    def cancel_batch(self, batch_id: str) -> Batch:
        # Cancelling twice is harmless upstream, so a retry after a lost response is safe; a 409 is not retried
        # because it means the batch is already finished.
        return Batch.from_api(self._request("POST", f"/batches/{batch_id}/cancel", idempotent=True).json())

    # Files

    def upload_file(self, path: str | Path, *, purpose: str = "batch", filename: str | None = None) -> FileObject:
        """Upload a file from disk, streamed: requests reads it in chunks through the multipart encoder."""
        path = Path(path)
        with path.open("rb") as handle:
            return self.upload_fileobj(handle, filename=filename or path.name, purpose=purpose)

    def upload_fileobj(self, handle: BinaryIO, *, filename: str, purpose: str = "batch") -> FileObject:
        response = self._request(
            "POST",
            "/files",
            files={"file": (filename, _StreamingUpload(handle), "application/jsonl")},
            data={"purpose": purpose},
            idempotent=False,
        )
        return FileObject.from_api(response.json())

    def retrieve_file(self, file_id: str) -> FileObject:
        return FileObject.from_api(self._request("GET", f"/files/{file_id}").json())

    def file_content(self, file_id: str, *, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """The file's bytes as an iterator of chunks; the connection is released when it is exhausted or closed."""
        response = self._request("GET", f"/files/{file_id}/content", stream=True, accept="application/binary")

        def chunks():
            try:
                yield from response.iter_content(chunk_size)
            except requests.RequestException as exc:
                raise Unavailable("The download was interrupted.") from exc
            finally:
                response.close()

        return chunks()

    # Transport

    def _request(self, method, path, *, idempotent=True, stream=False, accept=None, **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        headers = {"Accept": accept} if accept else {}
        retries = 0
        while True:
            headers["X-Stainless-Retry-Count"] = str(retries)
            response = None
            try:
                if "files" in kwargs:
                    kwargs["files"]["file"][1].rewind()
                response = self.session.request(
                    method, url, headers=headers, timeout=self.timeout, stream=stream, **kwargs
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                sent = not isinstance(exc, requests.ConnectTimeout) and not _never_connected(exc)
                if retries < self.max_retries and (idempotent or not sent):
                    self._backoff(retries, None, method, path, type(exc).__name__)
                    retries += 1
                    continue
                kind = "timed out" if isinstance(exc, requests.Timeout) else "could not be reached"
                raise Unavailable(f"The Batch API {kind} ({method} {path}).") from None
            except requests.RequestException as exc:
                raise Unavailable(f"The request to the Batch API failed ({type(exc).__name__}).") from None

            if response.status_code < 400:
                return response
            error = self._error_from(response)
            if retries < self.max_retries and self._should_retry(response, error, idempotent):
                response.close()
                self._backoff(retries, error.retry_after, method, path, f"HTTP {response.status_code}")
                retries += 1
                continue
            response.close()
            raise error

    def _should_retry(self, response: requests.Response, error: BatchApiError, idempotent: bool) -> bool:
        if error.retry_after is not None and error.retry_after > RETRY_AFTER_CAP:
            return False
        should = response.headers.get("x-should-retry", "").lower()
        if should in ("true", "false"):
            return should == "true" and (idempotent or response.status_code == 429)
        status = response.status_code
        if status == 409:
            return False  # Cancelling a finished batch answers 409 and will never succeed.
        if status == 429:
            # A 429 was refused before anything happened, so it is safe to repeat even a create.
            return error.code != "insufficient_quota"
        if not idempotent:
            return False
        return status in RETRYABLE_STATUSES or status >= 500

    def _backoff(self, retries, retry_after, method, path, reason):
        if retry_after is not None and 0 < retry_after <= RETRY_AFTER_CAP:
            delay = retry_after
        else:
            delay = min(INITIAL_RETRY_DELAY * 2**retries, MAX_RETRY_DELAY) * random.uniform(0.75, 1.0)
        logger.info("Retrying %s %s in %.2fs after %s", method, path, delay, reason)
        self._sleep(delay)

    def _error_from(self, response: requests.Response) -> BatchApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        details = body.get("error") if isinstance(body, dict) else None
        if not isinstance(details, dict):
            details = {}
        status = response.status_code
        message = details.get("message") or _default_message(status)
        return _error_class(status)(
            _redact(str(message), self._api_key),
            status=status,
            type=details.get("type"),
            code=details.get("code"),
            param=details.get("param"),
            request_id=response.headers.get("x-request-id"),
            retry_after=_retry_after_seconds(response),
        )


class _StreamingUpload:
    """A file wrapper that requests streams in chunks, and that can be rewound for a retry."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._start = handle.tell() if handle.seekable() else 0

    def rewind(self):
        if self._handle.seekable():
            self._handle.seek(self._start)

    def read(self, size=-1):
        return self._handle.read(size)


def _never_connected(exc: Exception) -> bool:
    """True when a connection error happened before any byte of the request was sent."""
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text or "NameResolutionError" in text


def _default_message(status: int) -> str:
    return {
        400: "The Batch API rejected the request.",
        401: "The Batch API rejected the API key.",
        403: "The API key is not allowed to do this.",
        404: "Not found.",
        409: "The request conflicts with the batch's current state.",
        413: "The file is too large.",
        429: "The Batch API is rate limiting requests; try again shortly.",
    }.get(status, f"The Batch API answered with HTTP {status}.")


_clients = threading.local()


def get_client() -> BatchClient:
    """The configured client (one per thread, as a requests.Session is not thread-safe).

    The real API with a key, the built-in sandbox without one.
    """
    config = (
        settings.OPENAI_API_KEY or settings.SANDBOX_API_KEY,
        settings.OPENAI_BASE_URL,
        settings.OPENAI_ORG_ID,
        settings.OPENAI_PROJECT_ID,
        settings.OPENAI_TIMEOUT,
        settings.OPENAI_MAX_RETRIES,
    )
    if getattr(_clients, "config", None) != config:
        api_key, base_url, organization, project, timeout, max_retries = config
        _clients.client = BatchClient(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            timeout=timeout,
            max_retries=max_retries,
        )
        _clients.config = config
    return _clients.client
