"""The results of a batch: the joined table, one page per request, and exports. Every page reads the local archive."""

from __future__ import annotations

from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_safe
from django.views.decorators.vary import vary_on_headers

from audit.log import record
from audit.models import Action
from audit.models import Outcome as AuditOutcome
from batches import access
from batches import sections as batch_sections
from batches.views.common import refreshed_batch, unreachable
from batches.views.live import live_region, unchanged
from results import exports
from results.archive import MODE_OFF, StoredFiles, request_archive, results_storage, storable_id
from results.links import request_links
from results.models import Outcome, ResultArchive, ResultFilter
from results.rows import export_rows, request_row, table_page
from results.sections import archive_key

RAW_SIDES = ("input", "result")


def _batch_and_archive(request, batch_id: str):
    """(batch, archive, None), or (None, None, freshness) when the batch is unknown and the API unreachable."""
    batch, freshness = refreshed_batch(request, batch_id)
    if batch is None:
        return None, None, freshness
    archive = request_archive(batch)
    if archive is not None:
        archive.batch = batch  # already read: saves a query wherever the archive names its batch
    return batch, archive, freshness


def _ready_archive(request, batch_id: str) -> tuple:
    batch, archive, freshness = _batch_and_archive(request, batch_id)
    if batch is not None and (archive is None or not archive.is_ready):
        raise Http404(f"The results of {batch_id} are not kept locally (yet).")
    return batch, archive, freshness


def _archive_key(archive: ResultArchive | None):
    """What of an archive the results page shows: what the detail page shows of it (sections.archive_key), and what
    the page says of the files kept."""
    if archive is None:
        return None
    files = (archive.evicted_at, archive.upstream_deleted_at, archive.upstream_expires_at, archive.stored_bytes)
    return (*archive_key(archive), *files)


@require_safe
@vary_on_headers("HX-Request")
def results_page(request, batch_id):
    batch, archive, freshness = _batch_and_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    ready = archive is not None and archive.is_ready
    # Other apps' parts of the page (the retry actions) show with the table only.
    sections = batch_sections.fill(request, batch, *([batch_sections.RESULTS_ACTIONS] if ready else []))
    fetching = archive is not None and archive.is_pending
    region = live_region(
        request,
        freshness,
        "results",
        request.get_full_path(),
        batch.payload_hash,
        _archive_key(archive),
        access.may(request.user, access.CREATE, batch.connection_id),
        sections.key,
        polling=not batch.is_terminal or fetching or not sections.settled,
    )
    if region.unchanged:
        return unchanged()
    result_filter = ResultFilter.from_query(request.GET)
    show_request = request.GET.get("request") != "hide"
    shown_query = request.GET.copy()
    shown_query.pop("page", None)
    if show_request:
        shown_query["request"] = "hide"
    else:
        shown_query.pop("request", None)
    context = {
        "batch": batch,
        "archive": archive,
        "freshness": freshness,
        "filter": result_filter,
        "show_request": show_request,
        "toggle_request_query": shown_query.urlencode(),
        "outcomes": Outcome,
        "sections": sections,
        "page": table_page(archive, result_filter, request.GET.get("page")) if ready else None,
        "keeping_off": batch.connection.archive_mode == MODE_OFF,
    }
    return region.render(request, "results/results.html", "results-panel", context)


@require_safe
def request_page(request, batch_id, position):
    """One row's request beside its answers (every answer for its custom_id), stepping through the filter."""
    batch, archive, freshness = _batch_and_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    if archive is None or not archive.is_ready:
        return redirect(reverse("results:list", args=[batch.batch_id]))
    result_filter = ResultFilter.from_query(request.GET)
    shown = request_row(archive, position, result_filter, request_links(batch.batch_id), raw_links=True)
    if shown is None:
        raise Http404(f"{batch_id} has no row {position} in its results.")
    context = {
        **shown,
        "batch": batch,
        "archive": archive,
        "filter": result_filter,
        "share_url": request.build_absolute_uri(reverse("results:request", args=[batch.batch_id, position])),
    }
    return render(request, "results/request.html", context)


@require_safe
def request_of(request, batch_id, custom_id=None):
    """The request page of a custom_id's first row, by redirect: for the error groups' examples (?custom_id=, which
    carries any text) and for links made when rows were linked by custom_id. Other query parameters are kept."""
    batch, archive, freshness = _batch_and_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    if archive is None or not archive.is_ready:
        return redirect(reverse("results:list", args=[batch.batch_id]))
    query = request.GET.copy()
    if custom_id is None:
        if "custom_id" not in query:
            raise Http404("Name the custom_id to look up: ?custom_id=…")
        custom_id = query.pop("custom_id")[-1]  # "" is a custom_id too
    # Looked up as archive.storable_id stored it: NUL (which PostgreSQL refuses in a query) made U+FFFD, cut to the
    # column.
    found = archive.lines.filter(custom_id=storable_id(custom_id)).order_by()
    # The smallest in Python: asked for the first by position, SQLite walks the batch's lines on the position index
    # (as results.rows._rows_sharing_custom_id says) instead of reading the custom_id's few rows off its index.
    position = min(found.values_list("position", flat=True), default=None)
    if position is None:
        raise Http404(f"{batch_id} has no request with the custom_id {custom_id[:200]!r}.")
    url = request_links(batch.batch_id)(position)
    return redirect(f"{url}?{query.urlencode()}" if query else url)


@require_safe
def results_export(request, batch_id, fmt):
    batch, archive, freshness = _ready_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    result_filter = ResultFilter.from_query(request.GET)
    lines = archive.lines.matching(result_filter).in_order()
    target = f"kept results as {fmt}" + (f" ({result_filter.query()})" if result_filter.is_active else "")
    record(request, Action.DOWNLOAD, AuditOutcome.OK, batch_id=batch.batch_id, target=target)
    rows = export_rows(archive, lines, fmt)
    return exports.download(rows, fmt, f"{batch.download_stem()}-results.{fmt}")


@require_safe
def results_file(request, batch_id, kind):
    """One of the batch's files as kept locally: still there after the API has deleted its copy."""
    batch, archive, freshness = _ready_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    name = archive.stored_names.get(kind)
    if name is None:
        raise Http404(f"No {kind} file of {batch_id} is kept locally.")
    record(request, Action.DOWNLOAD, AuditOutcome.OK, batch_id=batch.batch_id, target=f"kept {kind}")
    response = FileResponse(
        results_storage().open(name, "rb"), as_attachment=True, filename=f"{batch.download_stem()}-{kind}.jsonl"
    )
    response["Content-Type"] = "application/jsonl"
    response["Cache-Control"] = "private, no-store"
    return response


@require_safe
def raw_line(request, batch_id, position, side):
    """One line of a kept file (`side` "input", or "result": the row's answer), byte for byte, streamed: how a line too
    long to show on its request page is read."""
    batch, archive, freshness = _ready_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    line = archive.lines.filter(position=position).first() if side in RAW_SIDES else None
    if line is None:
        raise Http404(f"{batch_id} has no line {position} kept.")
    if side == "input":
        kind, offset, length = "input", line.input_offset, line.input_length
    else:
        kind, offset, length = line.result_kind, line.result_offset, line.result_length
    if offset is None or kind not in archive.stored_names:
        raise Http404(f"The {side} line of row {position} of {batch_id} is not kept.")
    record(request, Action.DOWNLOAD, AuditOutcome.OK, batch_id=batch.batch_id, target=f"kept {side} line {position}")
    files = StoredFiles(archive)

    def chunks():
        with files:
            yield from files.stream(kind, offset, length)
            yield b"\n"

    response = StreamingHttpResponse(chunks(), content_type="application/jsonl")
    name = f"{batch.download_stem()}-{side}-line-{line.line_number or position}.jsonl"
    response["Content-Disposition"] = content_disposition_header(True, name)
    response["Content-Length"] = str(length + 1)
    response["Cache-Control"] = "private, no-store"
    return response
