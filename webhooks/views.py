"""The webhook receiver: POST /webhooks/openai/<connection slug>/ (and /webhooks/openai/ for the default connection),
served without login and CSRF-exempt (the signature, with that connection's secret, is the authentication). It
verifies, records and enqueues, and never calls the API, so it answers within milliseconds."""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from webhooks import receiving

logger = logging.getLogger("batches.webhooks")

BUSY = "The dashboard's database is busy; try again."


def _declared_length(request) -> int | None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    return length if length >= 0 else None


def _answer(status: int, message: str) -> JsonResponse:
    return JsonResponse({"message": message}, status=status)


@csrf_exempt
@login_not_required
@require_POST
def openai_webhook(request, connection: str | None = None):
    # One answer for every connection that does not receive: an unknown slug, a paused one, one without a secret.
    try:
        receiver = receiving.receiving_connection(connection)
    except DatabaseError as exc:
        logger.warning("Webhook delivery not received: %s", exc)
        return _answer(503, BUSY)
    secret = receiving.secret_for(receiver, log=True) if receiver is not None else ""
    if not secret:
        raise Http404("No webhook receiver here.")
    length = _declared_length(request)
    if length is None:
        return _answer(400, "The Content-Length header is not a number.")
    too_large = f"A webhook body may hold at most {receiving.MAX_BODY_BYTES // 1024} KB."
    if length > receiving.MAX_BODY_BYTES:
        return _answer(413, too_large)
    body = request.read(receiving.MAX_BODY_BYTES + 1)
    if len(body) > receiving.MAX_BODY_BYTES:
        return _answer(413, too_large)
    try:
        event = receiving.verify(secret, body, request.headers, connection=receiver)
    except receiving.Refused as exc:
        return _answer(400, f"Refused: {exc}.")
    try:
        received = receiving.record(receiver, request.headers["webhook-id"], event)
    except DatabaseError as exc:  # a locked or unreachable database: the sender tries again later
        logger.warning("Webhook delivery %r not recorded: %s", request.headers["webhook-id"][:200], exc)
        return _answer(503, BUSY)
    if received.replayed:
        return _answer(200, "Received before; not processed again.")
    return _answer(200, "Received.")
