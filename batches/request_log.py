"""One log line per request, with a request id that the response carries too (X-Request-ID)."""

from __future__ import annotations

import logging
import re
import time
import uuid

logger = logging.getLogger("batches.requests")

# A proxy's own request id is kept when it looks like one, so a line can be followed from the proxy to here.
INCOMING_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# A share link's address is its secret (sharing.urls): logged without the token, whatever follows it.
SECRET_IN_PATH = re.compile(r"^/shared/[^/]*")


def logged_path(path: str) -> str:
    return SECRET_IN_PATH.sub("/shared/…", path, count=1)


class RequestLogMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.monotonic()
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if INCOMING_ID.fullmatch(incoming) else uuid.uuid4().hex
        response = self.get_response(request)
        # The sandbox's API answers carry the id the real API would give them; every other response carries ours.
        response.setdefault("X-Request-ID", request.request_id)
        user = getattr(request, "user", None)
        path = logged_path(request.path)
        context = {
            "request_id": request.request_id,
            "user": user.get_username() if user is not None and user.is_authenticated else "",
            "method": request.method,
            "path": path,
            "status": response.status_code,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        # INFO even for a 5xx: django.request already reports those as errors, with their traceback.
        logger.info("%s %s %s", request.method, path, response.status_code, extra=context)
        return response
