"""Request handling every page shares: bounded request bodies, session lifetimes, no caching of logged-in pages, the
viewer's time zone, and a signed-out browser's htmx requests sent to the login page."""

from __future__ import annotations

import contextlib
import time
import zoneinfo

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render, resolve_url
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django_htmx.http import HttpResponseClientRedirect

from batches import access
from batches.views.common import AmbiguousBatch, ambiguous
from batches.views.time_zone import SESSION_KEY as TIME_ZONE_KEY

# A body above this is refused before anything reads it: login forms, cancels, the admin's forms all fit easily.
MAX_BODY_BYTES = 1024 * 1024
# Room for the multipart framing and the form's other fields around an upload.
UPLOAD_FRAMING_BYTES = 10 * 1024 * 1024


def upload_body_limit() -> int:
    """The create page's (and the API's create) largest body: the largest file it takes (BATCHBOARD_MAX_UPLOAD_BYTES;
    a file over the API's limits is split into several batches) and the framing."""
    return settings.BATCHBOARD_MAX_UPLOAD_BYTES + UPLOAD_FRAMING_BYTES


# The sandbox API bounds its own bodies, with its own error answers: JSON bodies by DATA_UPLOAD_MAX_MEMORY_SIZE
# (checked from Content-Length before reading), file uploads while they stream to disk (sandbox/uploads.py).
SANDBOX_PREFIX = "/sandbox/"
# The session remembers its last request at most this often, so a page's polling does not write on every poll.
ACTIVITY_WRITE_SECONDS = 60
SESSION_STARTED_KEY = "batchboard_started_at"
SESSION_SEEN_KEY = "batchboard_seen_at"


def _declared_length(request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None


def body_limit(request) -> int | None:
    """The largest body this request may carry; None where the view bounds the body itself while reading.

    The larger limit applies only to the create page for users who may create batches: an anonymous visitor can
    never make the server spool more than MAX_BODY_BYTES.
    """
    if request.path.startswith(SANDBOX_PREFIX) and settings.SANDBOX_ENABLED:
        return None
    if request.path == reverse("batches:create") and access.connections(request.user, access.CREATE):
        return upload_body_limit()
    # An upload through the JSON API: the api app names who sends it (a token's user, or the session's) before this.
    uploader = getattr(request, "batch_uploader", None)
    if uploader is not None and access.connections(uploader, access.CREATE):
        return upload_body_limit()
    return MAX_BODY_BYTES


class RequestBodyLimitMiddleware:
    """Refuse a body larger than the page takes (body_limit) with 413, from its Content-Length, before anything
    parses it.

    Under WSGI a request body is read only up to its Content-Length (a body without one reads as empty), so the
    declared length bounds what any later step can read. Under ASGI the server hands the body over in chunks, and
    dashboard.asgi counts them against the same limit before Django reads them.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        length = _declared_length(request)
        if length is None or length < 0:
            return render(request, "400.html", status=400)
        if length > MAX_BODY_BYTES:
            limit = body_limit(request)
            if limit is not None and length > limit:
                context = {"limit": limit, "length": length, "upload_limit": limit == upload_body_limit()}
                return render(request, "413.html", context, status=413)
        return self.get_response(request)


def _is_activity(request) -> bool:
    """A page loaded or a form sent, rather than an htmx refresh made in the background (polling, live panels)."""
    return request.method != "GET" or request.headers.get("HX-Request") != "true"


class SessionLifetimeMiddleware:
    """End a session after DJANGO_SESSION_IDLE_SECONDS without a request, or DJANGO_SESSION_MAX_SECONDS after login.

    The cookie and the stored session expire after the absolute lifetime (SESSION_COOKIE_AGE); the idle time is
    checked here from a timestamp the session keeps, rewritten at most once a minute. A page's own polling is not
    activity: a tab left open on a live list still ends its session.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated:
            now = int(time.time())
            started = request.session.setdefault(SESSION_STARTED_KEY, now)
            seen = request.session.get(SESSION_SEEN_KEY, now)
            if now - seen > settings.SESSION_IDLE_SECONDS or now - started > settings.SESSION_MAX_SECONDS:
                logout(request)
            elif _is_activity(request) and (
                now - seen >= ACTIVITY_WRITE_SECONDS or SESSION_SEEN_KEY not in request.session
            ):
                request.session[SESSION_SEEN_KEY] = now
        return self.get_response(request)


def stamp_session(sender, request, user, **kwargs):
    """On login (a user_logged_in receiver): the session's lifetimes start now."""
    if request is not None and hasattr(request, "session"):
        now = int(time.time())
        request.session[SESSION_STARTED_KEY] = now
        request.session[SESSION_SEEN_KEY] = now


class NoStoreForUsersMiddleware:
    """Pages and fragments shown to a logged-in user are never stored by a browser or a proxy cache."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.user.is_authenticated:
            add_never_cache_headers(response)
        return response


class HtmxLoginRedirectMiddleware:
    """A signed-out browser's htmx request (a poll after the session ended) is answered with a full-page redirect to
    the login page (HX-Redirect) instead of a login form swapped into a live region. Listed after HtmxMiddleware."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.htmx and response.status_code == 302 and not request.user.is_authenticated:
            login_url = resolve_url(settings.LOGIN_URL)
            if response["Location"].startswith(login_url):
                # Back to the page the browser shows (not the fragment it polled) after logging in again.
                page = request.htmx.current_url_abs_path or request.get_full_path()
                return HttpResponseClientRedirect(redirect_to_login(page, login_url).url)
        return response


class TimeZoneMiddleware:
    """Times in UTC (settings.TIME_ZONE) unless the viewer picked a zone (batches.views.time_zone)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        timezone.deactivate()
        name = request.session.get(TIME_ZONE_KEY)
        if name:
            # A zone removed from the system since it was chosen: UTC.
            with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.activate(zoneinfo.ZoneInfo(name))
        return self.get_response(request)


class AmbiguousBatchMiddleware:
    """Any page of a batch whose id exists in several of the viewer's connections answers with the page that links
    each (batches.views.common.visible_batch_connection raises it)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, AmbiguousBatch):
            return ambiguous(request, exception)
        return None
