"""Validating a batch input file as the API does, line by line from disk, and reading its requests back later.

Error codes and shapes follow REFERENCE §9.3 and the examples: `errors.data[]` entries with `code`, `message`,
`param` and a 1-based `line`. The first problem of a line is reported, at most MAX_REPORTED_ERRORS in all.
Blank lines are skipped (their numbers still count), as most JSONL readers do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batches.services import MAX_REQUESTS_PER_BATCH
from sandbox import results
from sandbox.simulation import checkpoints

MAX_REPORTED_ERRORS = 100
ENDPOINTS_WITHOUT_MODEL = ("/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos")


@dataclass
class InputScan:
    total: int = 0
    model: str | None = None
    errors: list[dict] = field(default_factory=list)
    checkpoints: list[list[int]] = field(default_factory=list)


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


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
    if endpoint not in ENDPOINTS_WITHOUT_MODEL and (not isinstance(model, str) or not model):
        return _error("invalid_request", "Missing required field 'model' in the request body.", number, "body.model")
    return None


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every non-blank line, read in chunks rather than all at once."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def iter_requests(path: Path) -> Iterator[dict]:
    """The request lines of a file that passed validation, in order."""
    for _, raw in iter_lines(path):
        yield json.loads(raw)


def scan_input(path: Path, endpoint: str, *, force_failure: bool = False) -> InputScan:
    """Validate the file and, if it is valid, precompute the run's checkpoints (see simulation.checkpoints)."""
    scan = InputScan()
    seen_ids: set[str] = set()
    first_model = None
    per_line = []
    for number, raw in iter_lines(path):
        scan.total += 1
        if len(scan.errors) >= MAX_REPORTED_ERRORS or scan.total > MAX_REQUESTS_PER_BATCH:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            scan.errors.append(_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        if not isinstance(line, dict):
            scan.errors.append(_error("invalid_request", "Each line must be a JSON object.", number))
            continue
        problem = _line_error(line, number, endpoint)
        if problem is None and line["custom_id"] in seen_ids:
            problem = _error(
                "duplicate_custom_id",
                f"The custom_id '{line['custom_id']}' on this line is already used by another request in the file.",
                number,
                "custom_id",
            )
        if problem is None:
            model = results.request_model(endpoint, line["body"])
            if first_model is None:
                first_model = model
            elif model != first_model:
                problem = _error(
                    "model_mismatch",
                    f"The model '{model}' on this line differs from the model '{first_model}' of the first request; "
                    "a batch uses one model.",
                    number,
                    "body.model",
                )
        if problem:
            scan.errors.append(problem)
            continue
        seen_ids.add(line["custom_id"])
        if not scan.errors:
            outcome = results.line_outcome(endpoint, line["custom_id"], line["body"], force_failure=force_failure)
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
    scan.model = results.snapshot(first_model) if first_model else None
    scan.checkpoints = checkpoints(per_line)
    return scan
