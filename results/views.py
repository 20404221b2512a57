"""The results of a batch: the joined table, one page per request, and exports. Every page reads the local archive."""

from __future__ import annotations

import json

from django.core.paginator import Paginator
from django.db.models import Subquery
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
from results import answers, exports
from results.archive import MODE_OFF, StoredFiles, loads_record, request_archive, results_storage, storable_id
from results.links import request_links
from results.models import ROWS_PER_PAGE, Outcome, ResultArchive, ResultFilter, ResultLine
from results.sections import archive_key

EXPORT_CHUNK = 1000
# The largest position a row can have (a PositiveIntegerField): a larger one in an address is no row, not an error.
MAX_POSITION = 2_147_483_647
CSV_COLUMNS = ["line", "custom_id", "request", "outcome", "status", "error_code", "error_message", "tokens", "answer"]
# A request page shows at most this much of each side (the input line, each answer): a 100 MB answer would otherwise
# be 200 MB of HTML. The rest is one click away as the raw line, streamed.
RENDER_BYTES = 256 * 1024
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


def _page(archive: ResultArchive, result_filter: ResultFilter, number, link=None):
    """The page of rows to show, each with the link to its request page (built here: reverse() per row is slow):
    `link` maps a row's position to that page's path (default: the dashboard's own request pages).

    A search scans every row (LIKE '%text%'), so it is done once: the matching positions give the count and the
    page's slice, instead of one scan to count and another to fetch the page.
    """
    lines = archive.lines.matching(result_filter).in_order()
    if result_filter.q:
        positions = list(lines.values_list("position", flat=True))
        page = Paginator(positions, ROWS_PER_PAGE).get_page(number)
        page.object_list = list(archive.lines.filter(position__in=page.object_list).in_order())
    else:
        paginator = Paginator(lines, ROWS_PER_PAGE)
        if not result_filter.is_active:
            paginator.count = archive.summary.get("rows", 0)  # known from indexing: saves counting every row
        page = paginator.get_page(number)
    link = link or request_links(archive.batch.batch_id)
    query = f"?{result_filter.query()}" if result_filter.is_active else ""
    for line in page:
        line.url = link(line.position) + query
    return page


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
        "page": _page(archive, result_filter, request.GET.get("page")) if ready else None,
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
    lines = _rows_sharing_custom_id(archive, position)
    line = next((entry for entry in lines if entry.position == position), None)
    if line is None:
        raise Http404(f"{batch_id} has no row {position} in its results.")
    result_filter = ResultFilter.from_query(request.GET)
    matching = archive.lines.matching(result_filter).exclude(custom_id=line.custom_id).only("position", "custom_id")
    previous = matching.filter(position__lt=line.position).order_by("-position")
    following = matching.filter(position__gt=line.position).order_by("position")
    with StoredFiles(archive) as files:
        request_side = _side(files, batch.batch_id, line, "input", line.input_offset, line.input_length)
        answers_shown = [
            _answer_view(entry, _side(files, batch.batch_id, entry, entry.result_kind, *_result_place(entry)))
            for entry in lines
            if entry.result_file
        ]
    request_record = request_side["record"]
    context = {
        "batch": batch,
        "archive": archive,
        "line": line,
        "filter": result_filter,
        "request_json": request_side["json"],
        "request_side": request_side,
        "prompt": answers.prompt_messages(batch.endpoint, request_record.get("body")) if request_record else [],
        "answers": answers_shown,
        "previous": previous.first(),
        "next": following.first(),
        "share_url": request.build_absolute_uri(reverse("results:request", args=[batch.batch_id, position])),
    }
    return render(request, "results/request.html", context)


def _result_place(line) -> tuple:
    return line.result_offset, line.result_length


def _side(files: StoredFiles, batch_id: str, line, kind: str, offset, length) -> dict:
    """One side of a request page (the input line, or one answer) within RENDER_BYTES: the parsed record and its
    pretty JSON, or, for a longer line, its start as text, `cut`, with the link to the whole raw line."""
    side = {"record": None, "json": "", "cut": False, "size": length or 0, "raw_url": ""}
    if offset is None or length is None:
        return side
    raw_side = "input" if kind == "input" else "result"
    side["raw_url"] = reverse("results:raw_line", args=[batch_id, line.position, raw_side])
    if length > RENDER_BYTES:
        head = files.head(kind, offset, length, RENDER_BYTES) or b""
        side.update(json=head.decode("utf-8", errors="replace") + "…", cut=True)
        return side
    side["record"] = loads_record(files.read(kind, offset, length))
    pretty = _pretty(side["record"])
    if len(pretty) > RENDER_BYTES:  # indentation can make a short line long (an embedding, one number a line)
        side.update(json=pretty[:RENDER_BYTES] + "…", cut=True)
    else:
        side["json"] = pretty
    return side


def _rows_sharing_custom_id(archive: ResultArchive, position: int) -> list[ResultLine]:
    """The row at `position` and every other row of its custom_id (further answers), in order: one query."""
    if position > MAX_POSITION:
        return []
    custom_id = archive.lines.filter(position=position).values("custom_id")[:1]
    return list(archive.lines.filter(custom_id=Subquery(custom_id)).in_order())


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
    found = archive.lines.filter(custom_id=storable_id(custom_id))
    position = found.order_by("position").values_list("position", flat=True).first()
    if position is None:
        raise Http404(f"{batch_id} has no request with the custom_id {custom_id[:200]!r}.")
    url = request_links(batch.batch_id)(position)
    return redirect(f"{url}?{query.urlencode()}" if query else url)


def _answer_view(line, side: dict) -> dict:
    record = side["record"]
    response = record.get("response") if record else None
    body = response.get("body") if isinstance(response, dict) else None
    return {
        "line": line,
        "side": side,
        "json": side["json"],
        "request_id": response.get("request_id", "") if isinstance(response, dict) else "",
        "text": answers.answer_text(body) if answers.is_text_answer(body) else "",
        "usage": _usage_figures(body),
    }


def _usage_figures(body) -> list[tuple[str, int]]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return []
    return [(name.replace("_", " "), value) for name, value in usage.items() if isinstance(value, int)]


def _pretty(record) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False) if record is not None else ""


@require_safe
def results_export(request, batch_id, fmt):
    batch, archive, freshness = _ready_archive(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    result_filter = ResultFilter.from_query(request.GET)
    lines = archive.lines.matching(result_filter).in_order()
    target = f"kept results as {fmt}" + (f" ({result_filter.query()})" if result_filter.is_active else "")
    record(request, Action.DOWNLOAD, AuditOutcome.OK, batch_id=batch.batch_id, target=target)
    rows = exports.csv_lines(CSV_COLUMNS, _csv_rows(archive, lines)) if fmt == "csv" else _jsonl_rows(archive, lines)
    return exports.download(rows, fmt, f"{batch.batch_id}-results.{fmt}")


EXPORT_FIELDS = (
    "line_number",
    "custom_id",
    "outcome",
    "status_code",
    "error_code",
    "error_message",
    "input_tokens",
    "output_tokens",
    "input_offset",
    "input_length",
    "result_file",
    "result_offset",
    "result_length",
    "prompt",
)


def _export_rows(lines):
    """The rows of `lines` as plain tuples (EXPORT_FIELDS), streamed: no model instance per row."""
    return lines.values_list(*EXPORT_FIELDS).iterator(chunk_size=EXPORT_CHUNK)


def _csv_rows(archive: ResultArchive, lines):
    """The CSV_COLUMNS of each line; the answer's text read from the stored result file."""
    kinds = dict(ResultLine.RESULT_FILES)
    with StoredFiles(archive) as files:
        for row in _export_rows(lines):
            number, custom_id, outcome, status, code, message, tokens_in, tokens_out = row[:8]
            text = ""
            if outcome == Outcome.SUCCEEDED:
                text = exports.answer_of(loads_record(files.read(kinds.get(row[10], ""), row[11], row[12])))
            tokens = "" if tokens_in is None and tokens_out is None else (tokens_in or 0) + (tokens_out or 0)
            yield [number or "", custom_id, row[13], outcome, status or "", code, message, tokens, text]


def _jsonl_rows(archive: ResultArchive, lines):
    """Each line: the row's place and outcome, then the input and result lines exactly as stored (null if none)."""
    kinds = dict(ResultLine.RESULT_FILES)
    with StoredFiles(archive) as files:
        for row in _export_rows(lines):
            number, custom_id, outcome = row[:3]
            yield exports.jsonl_line(
                {"line": number, "custom_id": custom_id, "outcome": outcome},
                files.read("input", row[8], row[9]),
                files.read(kinds.get(row[10], ""), row[11], row[12]),
            )


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
        results_storage().open(name, "rb"), as_attachment=True, filename=f"{batch.batch_id}-{kind}.jsonl"
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
    name = f"{batch.batch_id}-{side}-line-{line.line_number or position}.jsonl"
    response["Content-Disposition"] = content_disposition_header(True, name)
    response["Content-Length"] = str(length + 1)
    response["Cache-Control"] = "private, no-store"
    return response
