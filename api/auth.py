"""Who calls the API: a personal access token (Authorization: Bearer), or a signed-in session with its CSRF token.

A token acts as its user, within its scopes and within what the user's teams grant (batches.access); each token has
its own rate limit. A token never signs anyone in to the HTML pages: only these classes read it.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth
from ninja.utils import check_csrf

from api.errors import ApiError, rate_limited
from api.models import ApiToken
from batches import budget

BEARER = "bearer "


def bearer_secret(request) -> str:
    header = request.headers.get("Authorization", "")
    return header[len(BEARER) :].strip() if header.lower().startswith(BEARER) else ""


def token_of(request) -> ApiToken | None:
    """The live token the request carries, read once per request (api.middleware reads it first)."""
    if not hasattr(request, "api_token"):
        secret = bearer_secret(request)
        request.api_token = ApiToken.objects.by_secret(secret) if secret else None
    return request.api_token


class TokenAuth(HttpBearer):
    def authenticate(self, request, token):
        api_token = token_of(request)
        if api_token is None:
            if bearer_secret(request):
                # A token was sent and is not live: say so, rather than trying the session.
                raise ApiError(401, "This API token is unknown, expired or revoked.", code="invalid_token")
            return None
        limit = settings.BATCHBOARD_API_TOKEN_PER_MINUTE
        if not budget.allow_user(f"api:{api_token.pk}", limit):
            raise rate_limited(f"This token has made {limit} requests in the last minute, the most it may.")
        ApiToken.objects.note_used(api_token, timezone.now())
        request.user = api_token.user
        request.audit_username = api_token.audit_name
        return api_token


class SessionWithCsrf(SessionAuth):
    """A signed-in session; a request that changes something must carry the CSRF token, as a page's form does."""

    def _get_key(self, request):
        if not request.user.is_authenticated:
            return None
        if check_csrf(request):
            raise HttpError(403, "CSRF check failed: a signed-in session must send the CSRF token to change anything.")
        return request.COOKIES.get(self.param_name)


def require_scope(request, scope: str) -> None:
    """A token must hold `scope`; a session may do what its user may (the teams decide, as on the pages)."""
    api_token = request.auth if isinstance(request.auth, ApiToken) else None
    if api_token is not None and not api_token.allows(scope):
        raise ApiError(403, f"This token does not have the “{scope}” scope.", code="insufficient_scope")


AUTH = [TokenAuth(), SessionWithCsrf()]
