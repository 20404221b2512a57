"""An ASGI handler that bounds request bodies as they arrive (see dashboard.asgi)."""

from __future__ import annotations

import asyncio
import io

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import JsonResponse

from batches.middleware import MAX_BODY_BYTES, SANDBOX_PREFIX, body_limit
from sandbox.rules import MAX_FILE_BYTES

# The sandbox API bounds its own bodies while reading them (sandbox/uploads.py); here only its largest file counts,
# with room for the multipart framing, like batches.middleware.upload_body_limit().
SANDBOX_FRAMING_BYTES = 10 * 1024 * 1024


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _with_length(scope, length: int) -> dict:
    headers = [(name, value) for name, value in scope.get("headers", []) if name.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


class _CountingReceive:
    """The server's receive(), stopping the read (as a disconnect would) once the body passes the limit."""

    def __init__(self, receive, limit: int):
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.too_large = False

    async def __call__(self):
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.too_large = True
                raise RequestAborted()
        return message


def _empty_body_then_wait(receive):
    """A receive() for the refusal: an empty body, then nothing; the rest of the client's body is never read.

    Django listens for a disconnect while it answers; this listener waits until the answer is sent and Django
    cancels it.
    """
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()

    return replay


class BoundedBodyASGIHandler(ASGIHandler):
    async def handle(self, scope, receive, send):
        limit = await self._body_limit(scope)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, declared, limit)
            return
        counting = _CountingReceive(receive, limit)
        await super().handle(scope, counting, send)
        if counting.too_large:
            await self._refuse(scope, receive, send, counting.received, limit)

    async def _body_limit(self, scope) -> int:
        try:
            request = self.request_class(scope, io.BytesIO())
        except Exception:
            # Django answers such a request 400 itself; it need not read more than any page takes.
            return MAX_BODY_BYTES
        return await sync_to_async(_body_limit_of)(request)

    async def _refuse(self, scope, receive, send, length: int, limit: int) -> None:
        if scope["path"].startswith(SANDBOX_PREFIX) and settings.SANDBOX_ENABLED:
            # The sandbox's own views would see an empty body; a client of the API expects its error envelope.
            message = f"The request body ({length:,} bytes so far) is larger than the {limit:,} bytes taken."
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}
            await self.send_response(JsonResponse({"error": error}, status=413), send)
            return
        await super().handle(_with_length(scope, length), _empty_body_then_wait(receive), send)


def _body_limit_of(request) -> int:
    """body_limit for a request that has not been through the middleware yet: its session and user, lazily."""
    SessionMiddleware(lambda request: None).process_request(request)
    AuthenticationMiddleware(lambda request: None).process_request(request)
    limit = body_limit(request)
    return MAX_FILE_BYTES + SANDBOX_FRAMING_BYTES if limit is None else limit
