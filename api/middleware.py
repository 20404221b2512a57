"""What the API needs from the middleware stack: who may send a large upload, and JSON for every error under /api/v1/.

Listed before batches.middleware.RequestBodyLimitMiddleware, which answers a body too large before any view runs:
a create request names its uploader here (a token's user when the token may create, else the session's user), and
whatever an API address is refused with outside the API's own handlers (413, a malformed body, an unknown address)
is turned into the API's error shape.
"""

from __future__ import annotations

from api.auth import bearer_secret, token_of
from api.errors import error_response
from api.models import CREATE

PREFIX = "/api/v1/"
CREATE_PATH = "/api/v1/batches"
# Pages under the prefix that are HTML on purpose.
HTML_PATHS = ("/api/v1/docs",)


class ApiMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(PREFIX):
            return self.get_response(request)
        if request.method == "POST" and request.path == CREATE_PATH:
            request.batch_uploader = self._uploader(request)
        response = self.get_response(request)
        if response.status_code >= 400 and request.path not in HTML_PATHS and not _is_json(response):
            return _as_json(response)
        return response

    @staticmethod
    def _uploader(request):
        if bearer_secret(request):
            token = token_of(request)
            return token.user if token is not None and token.allows(CREATE) else None
        return request.user if request.user.is_authenticated else None


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def _as_json(response):
    messages = {
        400: "The request is malformed.",
        403: "Refused (for a signed-in session: send the CSRF token).",
        404: "There is no such address in the API.",
        405: "This address does not take this method.",
        413: "The request body is larger than this address takes.",
    }
    status = response.status_code
    message = messages.get(status, "The request could not be answered.")
    answer = error_response(status, message)
    if "Retry-After" in response:
        answer["Retry-After"] = response["Retry-After"]
    return answer
