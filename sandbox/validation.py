"""Validating a batch input file as the API does, line by line from disk, and reading its requests back later.

Error codes and shapes follow REFERENCE §9.3 and the examples: `errors.data[]` entries with `code`, `message`,
`param` and a 1-based `line`. The first problem of a line is reported, at most MAX_REPORTED_ERRORS in all.
The rules come from REFERENCE §6 ("one JSON object per line, UTF-8, no BOM"); where it is silent (sandbox choices):
a blank line between requests is not a JSON object and fails the file, while blank lines after the last request
are tolerated as trailing whitespace; a line without `model` differs from one that names a model; a line longer
than MAX_LINE_BYTES is refused without being read whole, so memory stays bounded whatever the file holds.
tests/sandbox/test_jsonl_cases.py holds the table of cases this module and the dashboard's create form are checked
against.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import results
from sandbox.rules import ENDPOINTS_WITHOUT_MODEL, MAX_LINE_BYTES, MAX_REQUESTS_PER_BATCH, UTF8_BOM
from sandbox.simulation import checkpoints

MAX_REPORTED_ERRORS = 100
READ_CHUNK_BYTES = 1024 * 1024
TOO_LONG = None  # what iter_lines yields in place of a line over MAX_LINE_BYTES


@dataclass
class InputScan:
    total: int = 0
    model: str | None = None
    errors: list[dict] = field(default_factory=list)
    checkpoints: list[list[int]] = field(default_factory=list)


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse(raw: bytearray, number: int) -> tuple[dict | None, dict | None]:
    """(the line's object, None) or (None, the error): strict UTF-8 without BOM, standard JSON, an object."""
    not_json = _error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if number == 1 and raw.startswith(UTF8_BOM):
        return None, _error(
            "invalid_json_line",
            "This line is not parseable as valid JSON: the file starts with a UTF-8 byte order mark (BOM).",
            number,
        )
    try:
        line = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None, not_json
    if not isinstance(line, dict):
        return None, _error("invalid_request", "Each line must be a JSON object.", number)
    return line, None


def _line_error(line: dict, number: int, endpoint: str) -> dict | None:
    """The first schema problem of a parsed line (duplicates and mismatches are checked by the caller)."""
    for name in ("custom_id", "method", "url", "body"):
        if name not in line:
            return _error("invalid_request", f"Missing required field '{name}' on this line.", number, name)
    if not isinstance(line["custom_id"], str) or not line["custom_id"]:
        return _error("invalid_request", "The custom_id must be a non-empty string.", number, "custom_id")
    if line["method"] != "POST":
        return _error(
            "invalid_request",
            f"The method {json.dumps(line['method'])} is not supported; only POST is allowed.",
            number,
            "method",
        )
    if line["url"] != endpoint:
        return _error(
            "url_mismatch",
            f"The url {json.dumps(line['url'])} on this line does not match the batch endpoint '{endpoint}'.",
            number,
            "url",
        )
    if not isinstance(line["body"], dict):
        return _error("invalid_request", "The body must be a JSON object.", number, "body")
    model = line["body"].get("model")
    if model is None and endpoint in ENDPOINTS_WITHOUT_MODEL:
        return None
    if not isinstance(model, str) or not model:
        return _error("invalid_request", "Missing required field 'model' in the request body.", number, "body.model")
    return None


def _read_line(handle) -> bytearray | None:
    """The next line with its line break (empty at the end of the file), or TOO_LONG once a longer one is skipped.

    Read in chunks into one growing buffer, so no more than MAX_LINE_BYTES (plus a chunk) is held at any time.
    """
    line = bytearray()
    while chunk := handle.readline(READ_CHUNK_BYTES):
        line += chunk
        if line.endswith(b"\n"):
            break
        if len(line) > MAX_LINE_BYTES + 2:
            while not chunk.endswith(b"\n") and (chunk := handle.readline(READ_CHUNK_BYTES)):
                pass
            return TOO_LONG
    line_break = 2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0
    return line if len(line) - line_break <= MAX_LINE_BYTES else TOO_LONG


def _is_blank(raw: bytearray) -> bool:
    return not raw or raw.isspace()  # isspace, unlike strip, makes no copy of a long line


def iter_lines(path: Path) -> Iterator[tuple[int, bytearray | None]]:
    """(1-based line number, raw bytes) of every line, blank ones included; TOO_LONG for a line over the cap."""
    with open(path, "rb") as handle:
        number = 0
        while (raw := _read_line(handle)) is TOO_LONG or raw:
            number += 1
            yield number, raw


def iter_requests(path: Path) -> Iterator[dict]:
    """The request lines of a file that passed validation, in order."""
    for _, raw in iter_lines(path):
        if not _is_blank(raw):
            yield json.loads(raw)


def _too_long(number: int) -> dict:
    return _error(
        "invalid_request",
        f"This line is longer than the limit of {MAX_LINE_BYTES:,} bytes ({MAX_LINE_BYTES / 1024**2:g} MB) "
        "for one request.",
        number,
    )


def _model_mismatch(model, first_model, number: int) -> dict:
    def shown(value):
        return f"'{value}'" if value is not None else "no model"

    return _error(
        "model_mismatch",
        f"The model {shown(model)} on this line differs from the model {shown(first_model)} of the first request; "
        "a batch uses one model.",
        number,
        "body.model",
    )


def scan_input(path: Path, endpoint: str, *, attempt: int = 0, force_failure: bool = False) -> InputScan:
    """Validate the file and, if it is valid, precompute the run's checkpoints (see simulation.checkpoints) for a
    batch that is `attempt` at its lines (see results.attempt_of)."""
    scan = InputScan()
    seen_ids: set[str] = set()
    first_model = ...  # the raw `body.model` of the first valid line (None when it has none)
    blank_lines: list[int] = []
    per_line = []
    for number, raw in iter_lines(path):
        if raw is not TOO_LONG and _is_blank(raw):
            blank_lines.append(number)  # an error only if a request follows
            continue
        for blank in blank_lines:
            if len(scan.errors) < MAX_REPORTED_ERRORS:
                scan.errors.append(_error("invalid_json_line", "This line is empty; it is not a JSON object.", blank))
        blank_lines = []
        scan.total += 1
        if len(scan.errors) >= MAX_REPORTED_ERRORS or scan.total > MAX_REQUESTS_PER_BATCH:
            continue
        if raw is TOO_LONG:
            scan.errors.append(_too_long(number))
            continue
        line, problem = _parse(raw, number)
        if problem is None:
            problem = _line_error(line, number, endpoint)
        if problem is None and line["custom_id"] in seen_ids:
            problem = _error(
                "duplicate_custom_id",
                f"The custom_id '{line['custom_id']}' on this line is already used by another request in the file.",
                number,
                "custom_id",
            )
        if problem is None:
            model = line["body"].get("model")
            if first_model is ...:
                first_model = model
            elif model != first_model:
                problem = _model_mismatch(model, first_model, number)
        if problem:
            scan.errors.append(problem)
            continue
        seen_ids.add(line["custom_id"])
        if not scan.errors:
            outcome = results.line_outcome(
                endpoint, line["custom_id"], line["body"], attempt=attempt, force_failure=force_failure
            )
            per_line.append(outcome.usage_row)

    if scan.total == 0:
        scan.errors = [_error("empty_file", "The batch input file is empty.", None)]
    elif scan.total > MAX_REQUESTS_PER_BATCH:
        message = (
            f"The batch input file has {scan.total:,} requests; a batch can have at most {MAX_REQUESTS_PER_BATCH:,}."
        )
        scan.errors = [_error("too_many_tasks", message, None), *scan.errors]
    if scan.errors:
        scan.total = 0
        return scan
    resolved = results.request_model(endpoint, {"model": first_model})
    scan.model = results.snapshot(resolved) if resolved else None
    scan.checkpoints = checkpoints(per_line)
    return scan
