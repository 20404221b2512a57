"""What the results and final-results exports share: the streamed download, the CSV lines, a JSONL line, an answer."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator

from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

from batches.spreadsheets import inert_cell
from results import answers

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl"}


class _Echo:
    """A file that hands back what csv.writer writes, so each row can be streamed."""

    def write(self, value):
        return value


def download(lines: Iterable, fmt: str, filename: str) -> StreamingHttpResponse:
    """An export streamed as it is produced ("csv" or "jsonl"), saved as `filename`, never cached."""
    response = StreamingHttpResponse(lines, content_type=CONTENT_TYPES[fmt])
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["Cache-Control"] = "private, no-store"
    return response


def csv_lines(columns: list[str], rows: Iterable[list]) -> Iterator[str]:
    """A CSV file line by line: a BOM (spreadsheets then read it as UTF-8) with the header, then every row, each
    cell made inert (custom_ids, error messages and answers come from outside)."""
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(columns)
    for row in rows:
        yield writer.writerow([inert_cell(value) for value in row])


# What some reader of text takes as the end of a line: "\r" for Python's universal newlines and many CSV-minded
# tools, the others for str.splitlines and JavaScript. In valid JSON a raw "\r" can only be whitespace between tokens
# (a space says the same) and the others only sit inside strings (their escapes say the same).
LINE_BREAKS = (("\r", " "), *((char, f"\\u{ord(char):04x}") for char in "\x85\u2028\u2029"))


def jsonl_line(head: dict, input_line: bytes | None, result_line: bytes | None) -> bytes:
    """One JSONL line: `head`'s fields, then the input and result lines as stored (null if none), on one line
    whatever a hostile file put in them.

    Each stored line is checked to be JSON and kept as written (its numbers, escapes and key order), with only its
    line breaks escaped (LINE_BREAKS); a stored line that is not JSON is exported as a JSON string of its text.
    """
    text = ", ".join(
        [
            json.dumps(head, ensure_ascii=False)[:-1],
            f'"input": {_json_value(input_line)}',
            f'"result": {_json_value(result_line)}}}',
        ]
    )
    for char, replacement in LINE_BREAKS:
        if char in text:  # rare: a scan is cheaper than a copy
            text = text.replace(char, replacement)
    return (text + "\n").encode()


def _json_value(raw: bytes | None) -> str:
    if raw is None:
        return "null"
    text = raw.decode("utf-8", errors="replace")
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return json.dumps(text, ensure_ascii=False)
    return text


def answer_of(record: dict | None) -> str:
    """The answer's text in a stored result line ("" without one)."""
    return answers.answer_text(((record or {}).get("response") or {}).get("body"))
