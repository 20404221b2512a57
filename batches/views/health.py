"""Probes for a process manager or load balancer (/healthz, /readyz) and Prometheus's scrape (/metrics)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from batches import freshness, metrics, reactions
from batches.models import Connection

logger = logging.getLogger(__name__)


def _text(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(body + "\n", status=status, content_type="text/plain; charset=utf-8")


@login_not_required
@never_cache
@require_safe
def healthz(request):
    """The process answers: nothing else is checked, and nothing is said."""
    return _text("ok")


@login_not_required
@never_cache
@require_safe
def readyz(request):
    """Ready to serve: the database and the shared cache answer, the sync loop's heartbeat is recent, and a task
    worker takes what is on the queue."""
    problem = _readiness_problem()
    if not problem:
        return _text("ready")
    response = _text(f"not ready: {problem}", status=503)
    # Expected while the service starts, and asked every few seconds by probes: an INFO line, not django.request's
    # ERROR for a 5xx (which it skips for a response marked as logged already).
    logger.info("Not ready: %s", problem)
    response._has_been_logged = True
    return response


def _readiness_problem() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        Connection.objects.default()
        loops = [(c.slug, freshness.loop_status(state_name=c.list_state)) for c in Connection.objects.syncing()]
        queue = reactions.queue_status()
    except DatabaseError as exc:
        return f"the database does not answer ({type(exc).__name__})"
    try:
        cache.get("batchboard:readyz")
    except Exception as exc:  # Any backend's failure (redis.ConnectionError, a database error) means not ready.
        return f"the cache does not answer ({type(exc).__name__})"
    for slug, loop in loops:
        named = "" if len(loops) == 1 else f" of connection {slug}"
        if loop.heartbeat_at is None:
            return f"the sync loop{named} has never run (is `manage.py sync_batches --loop` running?)"
        if not loop.alive:
            age = int((timezone.now() - loop.heartbeat_at).total_seconds())
            limit = int(freshness.stale_after().total_seconds())
            return f"no sign of the sync loop{named} for {age} s (more than {limit} s)"
    if queue.stuck:
        return (
            f"{queue.waiting} task(s) have waited {int(queue.oldest_waiting_seconds)} s on the queue "
            "(is `manage.py db_worker` running?)"
        )
    return ""


@login_not_required
@never_cache
@require_safe
def metrics_view(request):
    """Prometheus's text format, for a bearer of BATCHBOARD_METRICS_TOKEN; not there at all without one."""
    token = settings.BATCHBOARD_METRICS_TOKEN
    if not token:
        raise Http404("Metrics are off: set BATCHBOARD_METRICS_TOKEN.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not constant_time_compare(given.strip(), token):
        response = _text("A bearer token is required (BATCHBOARD_METRICS_TOKEN).", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="batchboard metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
