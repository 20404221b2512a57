"""Kept results as pages show them: a page of the table, one request beside its answers, the rows of an export.

The dashboard's results pages and a share link's read-only pages both read them here, each passing its own addresses:
nothing here links to a page a share link's reader cannot open unless asked to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from operator import attrgetter

from django.core.paginator import Paginator
from django.db.models import Max, Min, Q, Subquery
from django.urls import reverse

from results import answers, exports, matches, search
from results.archive import StoredFiles, loads_record
from results.links import request_links
from results.models import MAX_POSITION, ROWS_PER_PAGE, Outcome, ResultArchive, ResultFilter, ResultLine

EXPORT_CHUNK = 1000
CSV_COLUMNS = ["line", "custom_id", "request", "outcome", "status", "error_code", "error_message", "tokens", "answer"]
# A request page shows at most this much of each side (the input line, each answer): a 100 MB answer would otherwise
# be 200 MB of HTML. The rest is one click away as the raw line, streamed.
RENDER_BYTES = 256 * 1024


def table_page(archive: ResultArchive, result_filter: ResultFilter, number, link: Callable[[int], str] | None = None):
    """The page of rows to show, each with the link to its request page (built here: reverse() per row is slow):
    `link` maps a row's position to that page's path (default: the dashboard's own request pages).

    A search reads every match (a scan on SQLite, its indexes on PostgreSQL: results/search.py), so it is done once:
    the matching positions give the count and the page's slice, instead of one read to count and another to fetch
    the page. On SQLite they are kept between requests (results/matches.py).
    """
    if result_filter.q:
        page = Paginator(matches.every_match(archive, result_filter), ROWS_PER_PAGE).get_page(number)
        page.object_list = list(archive.lines.filter(position__in=list(page.object_list)).in_order())
    else:
        paginator = Paginator(archive.lines.matching(result_filter).in_order(), ROWS_PER_PAGE)
        if not result_filter.is_active:
            paginator.count = archive.summary.get("rows", 0)  # known from indexing: saves counting every row
        page = paginator.get_page(number)
    _link_rows(page, result_filter, link or request_links(archive.batch.batch_id))
    return page


def _link_rows(rows, result_filter: ResultFilter, link: Callable[[int], str]) -> None:
    query = f"?{result_filter.query()}" if result_filter.is_active else ""
    for line in rows:
        if line is not None:
            line.url = link(line.position) + query


def request_row(
    archive: ResultArchive, position: int, result_filter: ResultFilter, link: Callable[[int], str], *, raw_links: bool
) -> dict | None:
    """What a request page shows of the row at `position` (None when there is none): its request beside every answer
    for its custom_id, and the previous and next rows in the filter, each with its `url` made by `link`.

    `raw_links`: whether a side too long to show links to its whole raw line (a dashboard page a share link's reader
    cannot open)."""
    batch = archive.batch
    lines = _rows_sharing_custom_id(archive, position)
    line = next((entry for entry in lines if entry.position == position), None)
    if line is None:
        return None
    raw_link = _raw_links(batch.batch_id) if raw_links else None
    with StoredFiles(archive) as files:
        request_side = _side(files, raw_link, line, "input", line.input_offset, line.input_length)
        answers_shown = [_answer(files, raw_link, entry) for entry in lines if entry.result_file]
    request_record = request_side["record"]
    steps = _steps(archive, result_filter, line, {entry.position for entry in lines})
    _link_rows(steps.values(), result_filter, link)
    return {
        "line": line,
        "request_side": request_side,
        "prompt": answers.prompt_messages(batch.endpoint, request_record.get("body")) if request_record else [],
        "answers": answers_shown,
        **steps,
    }


def _steps(archive: ResultArchive, result_filter: ResultFilter, line: ResultLine, skipped: set[int]) -> dict:
    """The previous and next rows in the filter, other than `skipped` (the positions of the rows of the line's
    custom_id), or None.

    Without a search, a walk from `line` by position on the filter's index stops at the nearest match. A search on
    PostgreSQL reads every match off its indexes and sorts them (search.searched), so there both positions come from
    one such read (two walks would read every match twice). A search on SQLite reads every line it passes (no index
    holds parts of a text): its positions come from results/matches.py (ranges read outward from the row, or the
    matches kept from an earlier read). With a search, both rows are then read by position."""
    matching = archive.lines.matching(result_filter).exclude(custom_id=line.custom_id)
    if not result_filter.q:
        matching = matching.only("position", "custom_id")
        return {
            "previous": matching.filter(position__lt=line.position).in_order(descending=True).first(),
            "next": matching.filter(position__gt=line.position).in_order().first(),
        }
    if search.reads_every_line():
        previous, following = matches.nearest(archive, result_filter, line.position, skipped)
        positions = {"previous": previous, "next": following}
    else:
        positions = matching.order_by().aggregate(
            previous=Max("position", filter=Q(position__lt=line.position)),
            next=Min("position", filter=Q(position__gt=line.position)),
        )
    wanted = [position for position in positions.values() if position is not None]
    found = {row.position: row for row in archive.lines.filter(position__in=wanted).only("position", "custom_id")}
    return {name: found.get(position) for name, position in positions.items()}


def _raw_links(batch_id: str) -> Callable[[int, str], str]:
    """(position, side) -> the path of that row's raw line."""
    return lambda position, side: reverse("results:raw_line", args=[batch_id, position, side])


def _side(files: StoredFiles, raw_link, line, kind: str, offset, length) -> dict:
    """One side of a request page (the input line, or one answer) within RENDER_BYTES: the parsed record and its
    pretty JSON, or, for a longer line, its start as text, `cut`, with the link to the whole raw line (if any)."""
    side = {"record": None, "json": "", "cut": False, "size": length or 0, "raw_url": ""}
    if offset is None or length is None:
        return side
    if raw_link is not None:
        side["raw_url"] = raw_link(line.position, "input" if kind == "input" else "result")
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
    """The row at `position` and every other row of its custom_id (further answers), in order: one query.

    Sorted here: asked to sort by position, SQLite walks the batch's lines on the position index until it has seen
    every row of the custom_id (3-9 ms for 50,000 lines) instead of reading them off the custom_id index."""
    if position > MAX_POSITION:
        return []
    custom_id = archive.lines.filter(position=position).values("custom_id")[:1]
    return sorted(archive.lines.filter(custom_id=Subquery(custom_id)).order_by(), key=attrgetter("position"))


def _answer(files: StoredFiles, raw_link, line) -> dict:
    side = _side(files, raw_link, line, line.result_kind, line.result_offset, line.result_length)
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


def export_rows(archive: ResultArchive, lines, fmt: str) -> Iterator:
    """The rows of an export of `lines` in `fmt` ("csv" or "jsonl"), streamed, for exports.download."""
    if fmt == "csv":
        return exports.csv_lines(CSV_COLUMNS, _csv_rows(archive, lines))
    return _jsonl_rows(archive, lines)


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
