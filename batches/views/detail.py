"""The batch detail page, its live panel, and file downloads."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_safe
from django.views.decorators.vary import vary_on_headers

from batches import access, events, lookups, services
from batches import sections as batch_sections
from batches.freshness import failure_message, list_freshness
from batches.history import batch_history
from batches.views.common import CONNECTION_PARAMETER, picked_connection, refreshed_batch, unreachable, user_key
from batches.views.live import live_region, unchanged

logger = logging.getLogger(__name__)

FILE_KINDS = {"input": "Input", "output": "Output", "error": "Errors"}


@dataclass(frozen=True)
class BatchFile:
    kind: str
    label: str
    file_id: str
    size: int | None = None  # None when the size could not be fetched (or was not asked for)


def _files(request, batch, *, fetch_sizes: bool) -> list[BatchFile]:
    """The batch's input, output and error files, with the sizes known (at most three lookups, then cached)."""
    files = []
    for kind, label in FILE_KINDS.items():
        file_id = getattr(batch, f"{kind}_file_id")
        if file_id:
            size = lookups.file_size(
                file_id, fetch=fetch_sizes, user_key=user_key(request), connection=batch.connection
            )
            files.append(BatchFile(kind, label, file_id, size))
    return files


def _detail_path(request, batch_id: str) -> str:
    """The page's own address, naming the connection when the request did (the id may be in two)."""
    path = reverse("batches:detail", args=[batch_id])
    slug = picked_connection(request)
    return f"{path}?{CONNECTION_PARAMETER}={slug}" if slug else path


@require_safe
@vary_on_headers("HX-Request")
def batch_detail(request, batch_id):
    batch, freshness = refreshed_batch(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)

    final = batch.is_terminal
    # The results and retries cards (other apps' sections) may still change after the batch turned final.
    sections = batch_sections.fill(request, batch, batch_sections.DETAIL_NOTICES, batch_sections.DETAIL_CARDS)
    region = live_region(
        request,
        freshness,
        "detail",
        request.path,
        batch.payload_hash,
        batch.cancel_requested_at,
        freshness.display_key() if freshness.may_change else None,
        access.may(request.user, access.CANCEL, batch.connection_id),
        sections.key,
        polling=not final or not sections.settled,
    )
    if region.unchanged:
        return unchanged()
    api = batch.api
    # An unknown size costs an upstream call: make it for a full page and for the answers after the batch turned
    # final (when the result files appear), not for every poll of a running batch, and not while the API is failing
    # anyway. A final batch is never refreshed, so its own freshness cannot tell; the list's can.
    wants_sizes = (final or not request.htmx) and freshness.ok
    list_state = list_freshness(states=[batch.connection.list_state]) if wants_sizes else None
    fetch_sizes = wants_sizes and list_state.ok
    context = {
        "batch": batch,
        "api": api,
        "freshness": freshness,
        "expires_at": services.from_unix(api.expires_at),
        "files": _files(request, batch, fetch_sizes=fetch_sizes),
        "history": batch_history(batch),
        "sections": sections,
        "share_url": request.build_absolute_uri(_detail_path(request, batch.batch_id)),
    }
    if list_state is not None:
        context["api_freshness"] = list_state  # The auth banner's: read already.
    if region.is_poll:
        context["fragment"] = True  # carries the page title, which htmx applies: it names the status
    else:
        context["aside_sections"] = batch_sections.fill(request, batch, batch_sections.DETAIL_ASIDE)
    return region.render(request, "batches/batch_detail.html", "batch-panel", context)


class FileUnavailable(Exception):
    """A batch file that cannot be streamed now: `status` 404 (no such file, `missing` when the API no longer has
    it), 429 (the viewer's limit of downloads) or 502 (the API failed), with the reason to show."""

    def __init__(self, status: int, message: str, *, file_id: str = "", missing: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.file_id = file_id
        self.missing = missing


def file_download(request, batch, kind: str) -> StreamingHttpResponse:
    """One of the batch's files streamed through the dashboard (so the client never needs the API key), audited;
    the one path of the page's download and the JSON API's. Raises FileUnavailable before any byte is sent."""
    if kind not in FILE_KINDS:
        raise FileUnavailable(404, "Batch files are input, output or error.")
    file_id = getattr(batch, f"{kind}_file_id")
    if not file_id:
        raise FileUnavailable(404, f"{batch.batch_id} has no {kind} file.")
    try:
        chunks = lookups.file_content(file_id, user_key=user_key(request), connection=batch.connection)
    except lookups.UserLimited as exc:
        raise FileUnavailable(429, str(exc), file_id=file_id) from None
    except services.BatchApiError as exc:
        logger.warning("Download of %s (%s of %s) failed: %s", file_id, kind, batch.batch_id, exc)
        missing = isinstance(exc, services.NotFound)
        detail = f"{file_id}: " + ("not found" if missing else failure_message(exc))
        events.note_action(request, events.DOWNLOAD, events.ERROR, batch_id=batch.batch_id, target=kind, detail=detail)
        if missing:
            message = f"The API no longer has {file_id}, the {kind} file of {batch.batch_id}."
            raise FileUnavailable(404, message, file_id=file_id, missing=True) from None
        raise FileUnavailable(502, failure_message(exc), file_id=file_id) from None
    events.note_action(request, events.DOWNLOAD, events.OK, batch_id=batch.batch_id, target=kind, detail=file_id)
    response = StreamingHttpResponse(chunks, content_type="application/jsonl")
    if chunks.content_length is not None:
        response["Content-Length"] = str(chunks.content_length)  # lets the browser show download progress
    response["Content-Disposition"] = content_disposition_header(True, f"{batch.download_stem()}-{kind}.jsonl")
    response["Cache-Control"] = "private, no-store"
    return response


@require_safe
def batch_file(request, batch_id, kind):
    """Stream one of the batch's files through the dashboard, so the browser never needs the API key."""
    if kind not in FILE_KINDS:
        raise Http404("Batch files are input, output or error.")
    batch, freshness = refreshed_batch(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    try:
        return file_download(request, batch, kind)
    except FileUnavailable as exc:
        if not exc.file_id:
            raise Http404(exc.message) from None
        context = {
            "batch": batch,
            "kind": kind,
            "file_id": exc.file_id,
            "missing": exc.missing,
            "message": "" if exc.missing else exc.message,
        }
        return render(request, "batches/file_unavailable.html", context, status=exc.status)
