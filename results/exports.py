"""What the results and final-results exports share: the streamed download, the CSV lines, a JSONL line, an answer."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator

from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

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


# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection"): such a cell gets a leading "'".
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value):
    """`value` as a spreadsheet shows it but never evaluates: text starting like a formula gets a leading "'".
    Numbers stay numbers (the exports' numbers are counts, never negative)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(columns: list[str], rows: Iterable[list]) -> Iterator[str]:
    """A CSV file line by line: a BOM (spreadsheets then read it as UTF-8) with the header, then every row, each
    cell made inert (custom_ids, error messages and answers come from outside)."""
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(columns)
    for row in rows:
        yield writer.writerow([inert_cell(value) for value in row])


def jsonl_line(head: dict, input_line: bytes | None, result_line: bytes | None) -> bytes:
    """One JSONL line: `head`'s fields, then the input and result lines exactly as stored (null if none)."""
    return b"".join(
        [
            json.dumps(head, ensure_ascii=False)[:-1].encode(),
            b', "input": ',
            input_line or b"null",
            b', "result": ',
            result_line or b"null",
            b"}\n",
        ]
    )


def answer_of(record: dict | None) -> str:
    """The answer's text in a stored result line ("" without one)."""
    return answers.answer_text(((record or {}).get("response") or {}).get("body"))
