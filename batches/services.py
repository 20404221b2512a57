"""The Batch + Files API client: the only module that talks HTTP (auth, timeouts, retries, pagination, errors)."""

from __future__ import annotations

import ast
import email.utils
import enum
import io
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import requests
import urllib3.exceptions
from django.conf import settings

from batches import normalise

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
# What batchboard records: the API's statuses, and "unknown" for one it does not know (batches.normalise keeps the
# text sent). An unknown status is not final, so such a batch keeps being refreshed until it reports a known one.
RECORDED_STATUSES = (*STATUSES, normalise.UNKNOWN_STATUS)
# The order a batch passes through its statuses (the ones that can still change first), for lists and timelines.
LIFECYCLE = (
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "completed",
    "failed",
    "expired",
    "cancelled",
    normalise.UNKNOWN_STATUS,
)
STATUS_RANK = {status: rank for rank, status in enumerate(LIFECYCLE)}
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
# Endpoints whose requests may leave out `body.model` (the endpoint has a default model).
ENDPOINTS_WITHOUT_MODEL = frozenset({"/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos"})
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
# The shape of the ids batchboard accepts from the API and from URLs: one plain path segment, never a dot segment
# or a slash that would address another endpoint, and always linkable (the URL converter uses the same pattern).
BATCH_ID_PATTERN = re.compile(r"batch_[A-Za-z0-9_-]{1,120}")
FILE_ID_PATTERN = re.compile(r"file-[A-Za-z0-9_-]{1,120}")
# A compatible provider's ids have no fixed shape (LiteLLM's managed ids are long base64 texts), so its ids are
# checked only for what makes them safe as one path segment: no slash, no percent, never "." or "..", bounded.
# Every id of the OpenAI shape matches it too, so it is also what URLs and stored rows are checked against.
ANY_ID_PATTERN = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._~=+:-]{0,499}")
ID_LENGTH = 512  # the width of the columns that store ids


@dataclass(frozen=True)
class IdShapes:
    """The ids a connection's provider may answer with: the OpenAI shapes, or any path-safe id (ANY_ID_PATTERN)."""

    batch: re.Pattern
    file: re.Pattern


OPENAI_IDS = IdShapes(batch=BATCH_ID_PATTERN, file=FILE_ID_PATTERN)
ANY_IDS = IdShapes(batch=ANY_ID_PATTERN, file=ANY_ID_PATTERN)
MAX_INPUT_FILE_BYTES = 200 * 1024 * 1024

INSUFFICIENT_QUOTA = "insufficient_quota"

# Retries follow the official SDK (REFERENCE.md §13).
RETRYABLE_STATUSES = frozenset({408, 409, 429})
RETRY_AFTER_CAP = 120.0
# A call someone is waiting for (a page, a download, a cancel, a create) waits this long at most for a Retry-After.
INTERACTIVE_RETRY_AFTER_CAP = 5.0
# A call for a person keeps retrying 429s past OPENAI_MAX_RETRIES while its waits for them add up to this at most: a
# busy minute costs a person a few seconds rather than a failed cancel or download.
PERSON_RATE_LIMIT_PATIENCE = 5.0
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
JITTER = (0.75, 1.0)

UPLOAD_BLOCK_SIZE = 64 * 1024
DOWNLOAD_CHUNK_SIZE = 64 * 1024
# An error body is read only this far: a proxy's error page can be large and is never shown.
ERROR_BODY_LIMIT = 64 * 1024


def from_unix(value: int | None) -> datetime | None:
    """An API timestamp (integer Unix seconds, or None) as an aware UTC datetime."""
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def status_label(status: str) -> str:
    """A status as people read it: "in progress" for "in_progress"."""
    return status.replace("_", " ")


def _file_id(value: Any, ids: IdShapes = OPENAI_IDS) -> str | None:
    """The API sends null or "" for a missing file id; both mean none. An id that is not a file id is dropped (and
    logged), so it can never be sent back in a path."""
    if not isinstance(value, str) or not value:
        return None
    if not ids.file.fullmatch(value):
        logger.warning("Ignoring a file id that is not one: %r", value[:200])
        return None
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _shown(value: Any, length: int = 200) -> Any:
    """A text of an error answer as pages, logs and the audit log may hold it (batches.normalise.text: bounded, no NUL
    or lone surrogate); cut after the key is redacted, so that no part of it is left."""
    return normalise.text(value, length) if isinstance(value, str) else value


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


# A timestamp beyond this cannot be stored or shown (a datetime ends in year 9999): an odd value like any other, so a
# timestamp in milliseconds must not break recording. Counts and tokens are clamped by batches.normalise.
MAX_TIMESTAMP = 253_402_300_799


def _timestamp(value: Any) -> int | None:
    seconds = _int(value)
    return seconds if seconds is not None and 0 <= seconds <= MAX_TIMESTAMP else None


def _count(value: Any) -> int:
    return normalise.number(value, normalise.MAX_COUNT)


def _tokens(value: Any) -> int:
    return normalise.number(value, normalise.MAX_TOKENS)


# --- Typed results ----------------------------------------------------------


@dataclass(frozen=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0

    @classmethod
    def from_api(cls, data: dict | None) -> RequestCounts:
        data = _dict(data)
        return cls(
            total=_count(data.get("total")),
            completed=_count(data.get("completed")),
            failed=_count(data.get("failed")),
        )

    @property
    def processed(self) -> int:
        return self.completed + self.failed


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_api(cls, data: dict | None) -> Usage | None:
        """None for batches created before usage was reported; legacy prompt/completion keys are a fallback."""
        data = _dict(data)
        if not data:
            return None
        input_details = _dict(data.get("input_tokens_details") or data.get("prompt_tokens_details"))
        output_details = _dict(data.get("output_tokens_details") or data.get("completion_tokens_details"))
        return cls(
            input_tokens=_tokens(data.get("input_tokens", data.get("prompt_tokens"))),
            cached_tokens=_tokens(input_details.get("cached_tokens")),
            output_tokens=_tokens(data.get("output_tokens", data.get("completion_tokens"))),
            reasoning_tokens=_tokens(output_details.get("reasoning_tokens")),
            total_tokens=_tokens(data.get("total_tokens")),
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
            code=_text(data.get("code")),
            message=_text(data.get("message")),
            param=_text(data.get("param")),
            line=_int(data.get("line")),
        )


@dataclass(frozen=True)
class ApiBatch:
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
    def from_api(cls, data: dict, ids: IdShapes = OPENAI_IDS) -> ApiBatch:
        """Parse a Batch object; unknown fields stay in `raw`, odd values become None instead of failing.

        What is parsed and kept is the object as batches.normalise makes it storable: every path that records a
        batch's state comes through here. `ids` are the shapes the provider's ids may have.
        """
        data = normalise.batch_payload(data if isinstance(data, dict) else {})
        batch_id = data.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise ValueError("A Batch object has no id.")
        if not ids.batch.fullmatch(batch_id):
            raise ValueError(f"A Batch object has an id that is not a batch id: {batch_id[:200]!r}.")
        errors = _dict(data.get("errors")).get("data")
        return cls(
            id=batch_id,
            status=normalise.status(data.get("status"), STATUSES),
            endpoint=_text(data.get("endpoint")),
            input_file_id=_file_id(data.get("input_file_id"), ids),
            completion_window=_text(data.get("completion_window")),
            created_at=_timestamp(data.get("created_at")) or 0,
            model=_text(data.get("model")),
            output_file_id=_file_id(data.get("output_file_id"), ids),
            error_file_id=_file_id(data.get("error_file_id"), ids),
            in_progress_at=_timestamp(data.get("in_progress_at")),
            expires_at=_timestamp(data.get("expires_at")),
            finalizing_at=_timestamp(data.get("finalizing_at")),
            completed_at=_timestamp(data.get("completed_at")),
            failed_at=_timestamp(data.get("failed_at")),
            expired_at=_timestamp(data.get("expired_at")),
            cancelling_at=_timestamp(data.get("cancelling_at")),
            cancelled_at=_timestamp(data.get("cancelled_at")),
            request_counts=RequestCounts.from_api(data.get("request_counts")),
            usage=Usage.from_api(data.get("usage")),
            errors=tuple(BatchError.from_api(e) for e in (errors if isinstance(errors, list) else ()) if _dict(e)),
            metadata=normalise.metadata(data.get("metadata")),
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


def _listed_batch(item: Any, ids: IdShapes = OPENAI_IDS) -> ApiBatch | None:
    """A batch of a list page; one the client cannot use (no id, or an id that is not one) is logged and left out,
    so one odd entry never stops the whole list from refreshing."""
    try:
        return ApiBatch.from_api(item if isinstance(item, dict) else {}, ids)
    except ValueError as exc:
        logger.warning("Leaving out a listed batch: %s", exc)
        return None


@dataclass(frozen=True)
class BatchPage:
    data: tuple[ApiBatch, ...]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def from_api(cls, data: dict, ids: IdShapes = OPENAI_IDS) -> BatchPage:
        items = data.get("data")
        if not isinstance(items, list):
            raise ValueError("A list response has no data array.")
        batches = tuple(batch for batch in (_listed_batch(item, ids) for item in items) if batch is not None)
        return cls(
            data=batches,
            has_more=bool(data.get("has_more")) and bool(batches),
            first_id=_text(data.get("first_id")),
            last_id=_text(data.get("last_id")),
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
    def from_api(cls, data: dict, ids: IdShapes = OPENAI_IDS) -> FileObject:
        file_id = data.get("id")
        if not isinstance(file_id, str) or not ids.file.fullmatch(file_id):
            raise ValueError("A File object has no valid id.")
        data = normalise.json_value(data)  # its filename is shown: bounded, no NUL or lone surrogate
        return cls(
            id=file_id,
            bytes=_int(data.get("bytes")) or 0,
            created_at=_timestamp(data.get("created_at")) or 0,
            filename=_text(data.get("filename")) or "",
            purpose=_text(data.get("purpose")) or "",
            status=_text(data.get("status")),
            expires_at=_timestamp(data.get("expires_at")),
            raw=data,
        )


# --- Errors -----------------------------------------------------------------


class BatchApiError(Exception):
    """Any failure talking to the API. `message` is safe to show to a user: it never contains the key."""

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


class InvalidId(NotFound, ValueError):
    """An id that cannot name a batch or file (a dot segment, a slash, the wrong prefix): refused before any call."""


class RateLimited(BatchApiError):
    """429: too many requests or out of quota."""


class BudgetExhausted(BatchApiError):
    """Not sent: batchboard's own upstream budget is spent, or the API asked every caller to pause (batches.budget)."""


class Unavailable(BatchApiError):
    """The API could not be reached, timed out, answered 5xx, or answered something that is not the API."""


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


def _redact(text: Any, secret: str) -> Any:
    if isinstance(text, str) and secret and secret in text:
        text = text.replace(secret, "sk-…" + secret[-4:] if len(secret) > 8 else "[key]")
    return text


def _retry_after_seconds(response: requests.Response | None) -> float | None:
    """Seconds the server asks us to wait, from retry-after-ms or retry-after (seconds or an HTTP date)."""
    if response is None:
        return None
    raw_ms = response.headers.get("retry-after-ms")
    if raw_ms:
        try:
            seconds = float(raw_ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return seconds
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        try:
            return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)
        except (ValueError, OverflowError):
            return None  # A date that parses but cannot be a time (year 99999).
    return seconds if math.isfinite(seconds) else None


# How a call may be repeated after a failure.
RETRY_SAFE = "safe"  # reads: repeat on any transport failure and every status the SDK retries
RETRY_IDEMPOTENT = "idempotent"  # cancel: repeating is harmless, but a 409 (batch already finished) never changes
RETRY_ONCE = "once"  # create, upload: may act twice, so repeat only what provably did not act

# Failures of the connection itself, as opposed to a request that could not even be built.
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def _never_connected(exc: BaseException) -> bool:
    """True when the failure happened while opening the connection, before any byte of the request was sent.

    urllib3 raises ConnectTimeoutError and its subclasses NewConnectionError (refused, unreachable) and
    NameResolutionError only from connection setup; requests wraps them (in MaxRetryError) as `reason`, in `args`
    and in the exception chain, so all of those are followed.
    """
    pending: list[Any] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
            return True
        pending.extend((current.__cause__, current.__context__, getattr(current, "reason", None), *current.args))
    return False


def _describe_transport_error(exc: BaseException) -> str:
    if _never_connected(exc):
        return "timed out connecting" if isinstance(exc, requests.Timeout) else "could not be reached"
    if isinstance(exc, requests.Timeout):
        return "did not answer in time"
    return "closed the connection"


def _default_message(status: int) -> str:
    return {
        400: "The Batch API rejected the request.",
        401: "The Batch API rejected the API key.",
        403: "The API key is not allowed to do this.",
        404: "Not found.",
        408: "The Batch API timed out waiting for the request.",
        409: "The request conflicts with the batch's current state.",
        413: "The file is too large.",
        429: "The Batch API is rate limiting requests; try again shortly.",
    }.get(status, f"The Batch API answered with HTTP {status}.")


# --- Request bodies and downloads --------------------------------------------


def _quote_form_value(value: str) -> str:
    """Escape a name for a multipart header as browsers do (WHATWG), so a filename cannot break out of its quotes."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _MultipartUpload:
    """A multipart/form-data body that reads the file in blocks while it is sent, never holding it in memory.

    requests' `files=` reads the whole file into one bytes object, so the body is built here instead. Its length
    is known up front (`__len__`), so requests sends a Content-Length rather than chunked encoding, which some
    servers (Django's among them) do not accept. Iterating again starts again from the beginning (a retry).
    """

    def __init__(self, handle: BinaryIO, *, filename: str, fields: dict[str, str], content_type: str):
        try:
            self._start = handle.tell()
            handle.seek(0, io.SEEK_END)
            self._size = handle.tell() - self._start
            handle.seek(self._start)
        except (AttributeError, OSError) as exc:
            raise ValueError("The upload must be a seekable binary file.") from exc
        self._handle = handle
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote_form_value(name)}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        head.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quote_form_value(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        self._head = "".join(head).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        self._handle.seek(self._start)
        yield self._head
        remaining = self._size
        while remaining:
            block = self._handle.read(min(UPLOAD_BLOCK_SIZE, remaining))
            if not block:
                raise ValueError("The file became shorter while it was being uploaded.")
            remaining -= len(block)
            yield block
        yield self._tail


class FileRange(io.RawIOBase):
    """A read-only view of `length` bytes of an open binary file from `start`: a part of a split input file, uploaded
    by upload_fileobj as a file of its own without copying it (the multipart body reads it in blocks). Positions are
    relative to `start`; the underlying file is shared, so ranges of one file are read one at a time."""

    def __init__(self, handle: BinaryIO, start: int, length: int):
        super().__init__()
        self._handle, self._start, self._length, self._position = handle, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        return self._position

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._position
        size = left if size is None or size < 0 else min(size, left)
        if size <= 0:
            return b""
        self._handle.seek(self._start + self._position)
        block = self._handle.read(size)
        self._position += len(block)
        return block

    def readinto(self, buffer) -> int:
        block = self.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)


class FileContent:
    """A file's bytes as an iterator of chunks, read from the network as they are consumed.

    Exhausting or closing it releases the connection; Django's StreamingHttpResponse closes it for you.
    """

    def __init__(self, response: requests.Response, chunk_size: int):
        self._response = response
        self._chunks = response.iter_content(chunk_size)
        self.content_type = response.headers.get("Content-Type", "")
        length = response.headers.get("Content-Length", "")
        # isascii: "²" is a digit to str.isdigit but not to int(); the length cap keeps int() within its digit limit.
        known = length.isascii() and length.isdigit() and len(length) <= 18
        self.content_length = int(length) if known and not response.headers.get("Content-Encoding") else None

    def __iter__(self) -> FileContent:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except requests.RequestException:
            pass  # Raised below, outside the handler, so the error carries no chained requests exception.
        self.close()
        raise Unavailable("The download was interrupted before the whole file arrived.")

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> FileContent:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _BearerAuth(requests.auth.AuthBase):
    """Adds the key to each request, instead of a session header that a debug dump or log could show.

    requests drops it on a redirect to another host, and a ~/.netrc entry cannot replace it.
    """

    def __init__(self, api_key: str):
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        return request

    def __repr__(self) -> str:
        return "<BearerAuth [redacted]>"


class _ApiKeyHeaderAuth(_BearerAuth):
    """Azure OpenAI's way: the key in an `api-key` header."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["api-key"] = self._api_key
        return request

    def __repr__(self) -> str:
        return "<ApiKeyHeaderAuth [redacted]>"


# How a connection's kind sends its key.
BEARER = "bearer"
API_KEY_HEADER = "api-key"


def _segment(value: str, pattern: re.Pattern, what: str) -> str:
    """An id as one URL path segment: an id that is not one (empty, "..", with a slash) never reaches the API."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidId(f"{str(value)[:80]!r} is not a valid {what}.")
    return quote(value, safe="")


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
        sleep: Callable[[float], Any] | None = None,
        budget: Any = None,
        retry_after_cap: float = RETRY_AFTER_CAP,
        rate_limit_patience: float = 0.0,
        auth: str = BEARER,
        ids: IdShapes = OPENAI_IDS,
    ):
        self.base_url = base_url.rstrip("/")
        self.ids = ids
        self._api_key = api_key
        self.timeout = (connect_timeout, timeout)
        self.max_retries = max(int(max_retries), 0)
        # A Retry-After longer than this is not waited for: the call fails, saying how long the API asked.
        self.retry_after_cap = retry_after_cap
        # Seconds of waits for 429s a call may spend on further retries once max_retries are used (see get_client).
        self.rate_limit_patience = rate_limit_patience
        self._sleep = sleep or (budget.wait if budget is not None else time.sleep)
        # Shared accounting (batches.budget.SharedBudget): before_call() may raise BudgetExhausted, after_call()
        # counts each attempt's outcome. None for a client that answers to nobody (tests, the sandbox's own checks).
        self.budget = budget
        self.session = session or requests.Session()
        self.session.auth = _ApiKeyHeaderAuth(api_key) if auth == API_KEY_HEADER else _BearerAuth(api_key)
        self.session.headers.update(
            {
                "User-Agent": f"batchboard/{getattr(settings, 'VERSION', '0')} python-requests/{requests.__version__}",
                "Accept": "application/json",
            }
        )
        if organization:
            self.session.headers["OpenAI-Organization"] = organization
        if project:
            self.session.headers["OpenAI-Project"] = project

    def __repr__(self):
        return f"<BatchClient {self.base_url}>"

    def _batch(self, data: dict) -> ApiBatch:
        return ApiBatch.from_api(data, self.ids)

    def _file(self, data: dict) -> FileObject:
        return FileObject.from_api(data, self.ids)

    def close(self) -> None:
        self.session.close()

    # Batches

    def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        output_expires_after: int | None = None,
    ) -> ApiBatch:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            body["metadata"] = metadata
        if output_expires_after is not None:
            body["output_expires_after"] = {"anchor": "created_at", "seconds": int(output_expires_after)}
        response = self._request("POST", "/batches", json=body, retry=RETRY_ONCE)
        return self._parse(response, self._batch, "POST /batches")

    def retrieve_batch(self, batch_id: str) -> ApiBatch:
        path = f"/batches/{_segment(batch_id, self.ids.batch, 'batch id')}"
        return self._parse(self._request("GET", path), self._batch, f"GET {path}")

    def list_batches(self, *, after: str | None = None, limit: int = 20) -> BatchPage:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"limit must be an integer between 1 and {LIST_LIMIT_MAX}")
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return self._parse(
            self._request("GET", "/batches", params=params), partial(BatchPage.from_api, ids=self.ids), "GET /batches"
        )

    def iter_batch_pages(self, *, limit: int = LIST_LIMIT_MAX) -> Iterator[BatchPage]:
        """Every page of the list, newest first: `after` is the last item's id, as the SDK does (not `last_id`)."""
        after = None
        cursors_seen: set[str] = set()
        while True:
            page = self.list_batches(after=after, limit=limit)
            yield page
            if not page.has_more:
                return
            after = page.data[-1].id
            if after in cursors_seen:
                raise BatchApiError("The Batch API returned the same page twice; paging stopped to avoid a loop.")
            cursors_seen.add(after)

    def iter_batches(self, *, limit: int = LIST_LIMIT_MAX) -> Iterator[ApiBatch]:
        for page in self.iter_batch_pages(limit=limit):
            yield from page.data

    def cancel_batch(self, batch_id: str) -> ApiBatch:
        path = f"/batches/{_segment(batch_id, self.ids.batch, 'batch id')}/cancel"
        return self._parse(self._request("POST", path, retry=RETRY_IDEMPOTENT), self._batch, f"POST {path}")

    # Files

    def upload_file(self, path: str | Path, *, purpose: str = "batch", filename: str | None = None) -> FileObject:
        """Upload a file from disk, streamed in blocks (see _MultipartUpload)."""
        path = Path(path)
        with path.open("rb") as handle:
            return self.upload_fileobj(handle, filename=filename or path.name, purpose=purpose)

    def upload_fileobj(self, handle: BinaryIO, *, filename: str, purpose: str = "batch") -> FileObject:
        """Upload from an open, seekable binary file (e.g. a Django UploadedFile) starting at its current position."""
        body = _MultipartUpload(
            handle, filename=filename, fields={"purpose": purpose}, content_type="application/jsonl"
        )
        response = self._request(
            "POST", "/files", data=body, headers={"Content-Type": body.content_type}, retry=RETRY_ONCE
        )
        return self._parse(response, self._file, "POST /files")

    def retrieve_file(self, file_id: str) -> FileObject:
        path = f"/files/{_segment(file_id, self.ids.file, 'file id')}"
        return self._parse(self._request("GET", path), self._file, f"GET {path}")

    def file_content(self, file_id: str, *, chunk_size: int = DOWNLOAD_CHUNK_SIZE) -> FileContent:
        """The file's bytes as an iterator of chunks (FileContent). Errors such as 404 raise here, before any byte."""
        path = f"/files/{_segment(file_id, self.ids.file, 'file id')}/content"
        response = self._request("GET", path, stream=True, headers={"Accept": "application/binary"})
        return FileContent(response, chunk_size)

    # Transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry: str = RETRY_SAFE,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs,
    ) -> requests.Response:
        """Send one call, retrying as `retry` allows; return a 2xx response or raise a BatchApiError.

        Redirects are never followed: the API does not send them, and one could fetch any page it names.
        """
        url = f"{self.base_url}{path}"
        attempt = 0
        rate_limit_waits = 0.0
        while True:
            request_headers = {**(headers or {}), "X-Stainless-Retry-Count": str(attempt)}
            if self.budget is not None:
                self.budget.before_call()
            started = time.monotonic()
            response, failure, unsendable = self._send(method, url, request_headers, stream, kwargs)
            if self.budget is not None and unsendable is None:
                status = response.status_code if response is not None else None
                self.budget.after_call(status, _retry_after_seconds(response) if status == 429 else None)
            if unsendable is not None:
                raise Unavailable(f"The request to the Batch API could not be made ({unsendable}).")
            if failure is not None:
                may_repeat = retry != RETRY_ONCE or _never_connected(failure)
                what = _describe_transport_error(failure)
                del failure  # It holds the prepared request, key included; do not keep it alive.
                if attempt < self.max_retries and may_repeat:
                    self._pause(attempt, self._delay(attempt, None), method, path, f"it {what}")
                    attempt += 1
                    continue
                tries = f", {attempt + 1} attempts" if attempt else ""
                raise Unavailable(f"The Batch API {what} ({method} {path}{tries}).")

            logger.debug(
                "%s %s -> %s in %.2fs [%s]",
                method,
                path,
                response.status_code,
                time.monotonic() - started,
                response.headers.get("x-request-id", "-"),
            )
            if response.status_code < 300:
                return response
            if response.status_code < 400:
                error = _redirect_error(response, method, path)
                response.close()
                raise error
            error = self._error_from(response, stream)
            response.close()
            if _should_retry(response, error, retry, self.retry_after_cap):
                delay = self._delay(attempt, error.retry_after)
                # A 429 is answered before the API acts, so a patient caller may repeat it past max_retries.
                patient = response.status_code == 429 and rate_limit_waits + delay <= self.rate_limit_patience
                if attempt < self.max_retries or patient:
                    if response.status_code == 429:
                        rate_limit_waits += delay
                    self._pause(attempt, delay, method, path, f"HTTP {response.status_code}")
                    attempt += 1
                    continue
            raise error

    def _send(self, method, url, headers, stream, kwargs):
        """One attempt: (response, transport failure, reason it could not be sent), exactly one of them set.

        Failures are returned rather than raised so that the BatchApiError raised by the caller has no chained
        requests exception (whose request carries the key) in its context.
        """
        try:
            response = self.session.request(
                method, url, headers=headers, timeout=self.timeout, stream=stream, allow_redirects=False, **kwargs
            )
        except _TRANSPORT_ERRORS as exc:
            return None, exc, None
        except requests.RequestException as exc:
            return None, None, type(exc).__name__
        return response, None, None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before the next attempt: the server's Retry-After, else exponential backoff with jitter."""
        if retry_after is not None and 0 < retry_after <= self.retry_after_cap:
            return retry_after
        return min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY) * random.uniform(*JITTER)

    def _pause(self, attempt: int, delay: float, method: str, path: str, reason: str) -> None:
        logger.info("Retrying %s %s in %.2fs after %s (retry %d)", method, path, delay, reason, attempt + 1)
        self._sleep(delay)

    def _parse(self, response: requests.Response, parse: Callable[[dict], Any], call: str) -> Any:
        """The typed result of a successful response; anything else than the expected JSON object is an error."""
        try:
            data = json.loads(response.content, parse_int=normalise.parse_int, parse_constant=normalise.parse_constant)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return parse(data)
        except (ValueError, TypeError, AttributeError, RecursionError):
            content_type = _media_type(response)
            raise Unavailable(
                f"The answer to {call} is not the API's JSON (HTTP {response.status_code}, {content_type}); "
                "is the base URL right?",
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            ) from None

    def _error_from(self, response: requests.Response, stream: bool) -> BatchApiError:
        raw = _error_body(response, stream)
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            body = None
        details = body.get("error") if isinstance(body, dict) else None
        if isinstance(details, str):
            details = {"message": details}
        details = _gateway_unwrapped(_dict(details), response.status_code)
        status = response.status_code
        error_class = RateLimited if details.get("code") == INSUFFICIENT_QUOTA else _error_class(status)
        content_type = _media_type(response)
        message = _text(details.get("message"))
        if status == 404 and not details:
            # The API answers every unknown id or route with its error envelope; a bare 404 page means the base
            # URL is wrong, which must not read as "this batch does not exist".
            error_class = Unavailable
            message = f"The Batch API URL answered HTTP 404 without an API error ({content_type}); is it right?"
        elif not message:
            message = _default_message(status)
            if body is None and raw.strip():
                message += f" The answer was not an API error ({content_type}): a proxy or gateway may be failing."
        return error_class(
            _shown(_redact(message, self._api_key), normalise.ERROR_TEXT_LENGTH),
            status=status,
            type=_shown(_redact(_text(details.get("type")), self._api_key)),
            code=_shown(_redact(_text(details.get("code")), self._api_key)),
            param=_shown(_redact(_text(details.get("param")), self._api_key)),
            request_id=response.headers.get("x-request-id"),
            retry_after=_retry_after_seconds(response),
        )


def _should_retry(response: requests.Response, error: BatchApiError, retry: str, retry_after_cap: float) -> bool:
    """The SDK's decision (REFERENCE.md §13), narrowed for calls that must not act twice."""
    status = response.status_code
    if error.retry_after is not None and error.retry_after > retry_after_cap:
        return False
    # A 429 is refused before anything happens, so even a create may be repeated; any other answer may come
    # after the call acted.
    if retry == RETRY_ONCE and status != 429:
        return False
    # Cancelling a finished batch answers 409 and will never succeed, whatever x-should-retry says.
    if retry == RETRY_IDEMPOTENT and status == 409:
        return False
    # Out of credit: waiting a second never helps (the SDK retries it; we do not), whatever status a gateway made
    # of it and whatever it says about retrying.
    if error.code == INSUFFICIENT_QUOTA:
        return False
    should = response.headers.get("x-should-retry", "").strip().lower()
    if should in ("true", "false"):
        return should == "true"
    return status in RETRYABLE_STATUSES or status >= 500


# What a gateway (LiteLLM's proxy and the like) puts before the upstream's own error message.
_GATEWAY_PREFIX = re.compile(r".{0,200}?\bError code: (\d{3}) - ", re.DOTALL)
# Words that mean "out of credit" whatever envelope carries them.
_QUOTA_WORDS = (INSUFFICIENT_QUOTA, "exceeded your current quota")
# How many ends of an embedded error are tried when text follows it.
_EMBEDDED_TRIES = 20


def _gateway_unwrapped(details: dict, status: int) -> dict:
    """The API's own error details from an envelope a gateway rewrote, else the details as they came.

    A gateway in front of the API may turn `code` into the status as text ("429"), `type` into
    "internal_server_error", and put "Error code: 429 - " and the API's own error (as JSON or a Python dict's text)
    in the message. Only what is unambiguous is taken: the embedded error when it parses, else the message without
    the prefix, and "out of quota" when the words say so.
    """
    message = _text(details.get("message")) or ""
    prefix = _GATEWAY_PREFIX.match(message)
    if prefix is None and str(details.get("code")) != str(status):
        return details
    rest = message[prefix.end() :] if prefix else message
    embedded = _embedded_error(rest)
    if embedded is not None:
        return embedded
    gateway_type = _text(details.get("type"))
    unwrapped = {
        "message": rest.strip() or None,
        "type": None if gateway_type == "internal_server_error" and status < 500 else gateway_type,
        "code": None,
        "param": details.get("param"),
    }
    if any(word in message.lower() for word in _QUOTA_WORDS):
        unwrapped["type"] = unwrapped["code"] = INSUFFICIENT_QUOTA
    return unwrapped


def _embedded_error(text: str) -> dict | None:
    """The API error inside a gateway's message, written as JSON or as a Python dict, possibly with text after it."""
    start = text.find("{")
    if start < 0:
        return None
    text = text[start:]
    try:
        found = json.JSONDecoder().raw_decode(text)[0]
    except (ValueError, RecursionError):
        found = None
        ends = [index for index, char in enumerate(text) if char == "}"][-_EMBEDDED_TRIES:]
        for end in reversed(ends):
            try:
                found = ast.literal_eval(text[: end + 1])
                break
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    if not isinstance(found, dict):
        return None
    error = found.get("error", found)
    if not isinstance(error, dict) or not _text(error.get("message")):
        return None
    return error


def _redirect_error(response: requests.Response, method: str, path: str) -> BatchApiError:
    """A 3xx: the API never redirects, and following one could fetch (and serve as a file) any page it names."""
    return BatchApiError(
        f"The Batch API answered {method} {path} with a redirect (HTTP {response.status_code}); batchboard follows "
        "no redirects, so nothing was fetched. Is OPENAI_BASE_URL right?",
        status=None,
        request_id=response.headers.get("x-request-id"),
    )


def _media_type(response: requests.Response) -> str:
    """The answer's media type without parameters ("text/html"), for error messages."""
    return response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"


def _error_body(response: requests.Response, stream: bool) -> bytes:
    """The start of an error response's body (the whole of it unless streamed), or b"" if it cannot be read."""
    try:
        if not stream:
            return response.content[:ERROR_BODY_LIMIT]
        chunks, size = [], 0
        for chunk in response.iter_content(16 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
        return b"".join(chunks)[:ERROR_BODY_LIMIT]
    except requests.RequestException:
        return b""


_clients = threading.local()
# A page waits at most this long (and retries at most once) for what it asks the API itself: it shows the cache
# rather than make its viewer wait for the full timeout and retries that the sync loop can afford.
PAGE_TIMEOUT = 5.0
PAGE_MAX_RETRIES = 1


class CallFor(enum.StrEnum):
    """Whom a call is made for. It decides the call's share of the upstream budget (batches.budget), whether it
    waits out the API's pause, and the client's timeout and retries (get_client)."""

    LOOP = "loop"  # the sync loop and background work (archiving results): may skip its turn
    PAGE = "page"  # what a page asks the API for itself (a running batch's refresh, a file's size): shows the cache
    DOWNLOAD = "download"  # a person's download of a batch's file
    CREATE = "create"  # a person's create or retry: the upload, the file check and the create
    CANCEL = "cancel"  # a person's cancel


# Calls a person is waiting for: they wait out a short pause and a short Retry-After rather than fail at once.
PEOPLE = frozenset({CallFor.DOWNLOAD, CallFor.CREATE, CallFor.CANCEL})


@dataclass(frozen=True)
class Upstream:
    """Where one connection's calls go and how they authenticate (batches.connections builds it)."""

    api_key: str = field(repr=False)
    base_url: str
    organization: str = ""
    project: str = ""
    auth: str = BEARER
    ids: IdShapes = OPENAI_IDS
    per_minute: int = 120  # the connection's upstream budget (batches.budget)


def get_client(caller: CallFor = CallFor.LOOP, connection: Any = None) -> BatchClient:
    """The client of this connection (the default one when None) for this caller: one per thread, caller and
    connection, as a requests.Session is not thread-safe.

    Pages and downloads get the shorter timeout (and pages fewer retries); all but the loop wait for a Retry-After of
    INTERACTIVE_RETRY_AFTER_CAP at most, and calls for a person retry 429s for PERSON_RATE_LIMIT_PATIENCE more
    seconds once their retries are used. Each connection spends its own upstream budget.
    """
    # Django models: imported late, this module loads before them.
    from batches.budget import SharedBudget
    from batches.models import Connection

    connection = connection or Connection.objects.default()
    timeout, max_retries = settings.OPENAI_TIMEOUT, settings.OPENAI_MAX_RETRIES
    if caller in (CallFor.PAGE, CallFor.DOWNLOAD):
        timeout = min(timeout, PAGE_TIMEOUT)
    if caller == CallFor.PAGE:
        max_retries = min(max_retries, PAGE_MAX_RETRIES)
    upstream = connection.upstream()
    config = (upstream, timeout, max_retries)
    key = (caller, connection.pk)
    configs = _clients.__dict__.setdefault("configs", {})
    clients = _clients.__dict__.setdefault("clients", {})
    if configs.get(key) != config:
        previous = clients.get(key)
        if previous is not None:
            previous.close()
        clients[key] = BatchClient(
            api_key=upstream.api_key,
            base_url=upstream.base_url,
            organization=upstream.organization,
            project=upstream.project,
            auth=upstream.auth,
            ids=upstream.ids,
            timeout=timeout,
            max_retries=max_retries,
            budget=SharedBudget(caller, connection.pk, upstream.per_minute),
            retry_after_cap=RETRY_AFTER_CAP if caller == CallFor.LOOP else INTERACTIVE_RETRY_AFTER_CAP,
            rate_limit_patience=PERSON_RATE_LIMIT_PATIENCE if caller in PEOPLE else 0.0,
        )
        configs[key] = config
    return clients[key]
