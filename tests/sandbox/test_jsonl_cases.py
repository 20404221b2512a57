"""One table of Batch input files with the verdicts the API guide gives, run through both validators.

The dashboard's create form (batches/forms.py) checks a file before anything is sent; the sandbox
(sandbox/validation.py) checks it as the API would, during `validating`. Both must reach the guide's verdict
(REFERENCE §6: one JSON object per line, UTF-8 without BOM, unique `custom_id`, `method` POST, `url` equal to the
endpoint, one model, at most 50,000 requests). Where the dashboard deliberately refuses earlier than the API would,
the case says so in `dashboard` and gives the reason. A refusal names the line it expects to be reported.
"""

import io
import json
import re
from dataclasses import dataclass

import pytest

from batches import services
from batches.forms import validate_jsonl
from sandbox import rules, validation

# Both validators are functions of the file's bytes: a second database changes nothing.
pytestmark = pytest.mark.once

ACCEPT, REFUSE = "accept", "refuse"
CHAT = "/v1/chat/completions"
REQUEST_LIMIT = 25
CLIENT_REQUEST_LIMIT = services.MAX_REQUESTS_PER_BATCH  # as the client states it, before the tests lower it


def _request(custom_id="a", *, url=CHAT, method="POST", **body):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **body}
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def _jsonl(*lines, end=b"\n") -> bytes:
    encoded = [line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines]
    return b"\n".join(encoded) + end


def _moderation(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/moderations", "body": {"input": "hello", **body}}


def _without_model(custom_id):
    request = _request(custom_id)
    del request["body"]["model"]
    return request


@dataclass(frozen=True)
class Case:
    name: str
    content: bytes
    api: str  # the verdict the guide gives (what the sandbox must answer)
    line: int | None = None  # the line a refusal must name (None: the whole file)
    endpoint: str = CHAT  # the batch's endpoint, which the dashboard infers from the file
    dashboard: str | None = None  # only where the dashboard must differ from the API
    why: str = ""  # the source of the verdict, or the reason for a difference

    @property
    def dashboard_verdict(self) -> str:
        return self.dashboard or self.api


CASES = [
    Case("three valid requests", _jsonl(_request("a"), _request("b"), _request("c")), ACCEPT),
    Case("no line break after the last line", _jsonl(_request("a"), _request("b"), end=b""), ACCEPT),
    Case("CRLF line breaks", _jsonl(_request("a"), _request("b")).replace(b"\n", b"\r\n"), ACCEPT),
    Case(
        "blank lines after the last request",
        _jsonl(_request("a"), _request("b")) + b"\n \n",
        ACCEPT,
        why="trailing whitespace; the reference is silent, both tolerate it",
    ),
    Case(
        "a blank line between requests",
        _jsonl(_request("a"), b"", _request("b")),
        REFUSE,
        line=2,
        why="§6: one JSON object per line; an empty line is none",
    ),
    Case(
        "a whitespace-only line between requests",
        _jsonl(_request("a"), b"   \t", _request("b")),
        REFUSE,
        line=2,
    ),
    Case("an empty file", b"", REFUSE, why="§9.3 empty_file"),
    Case("only blank lines", b"\n\n  \n", REFUSE),
    Case("a UTF-8 byte order mark", b"\xef\xbb\xbf" + _jsonl(_request("a")), REFUSE, line=1, why="§6: no BOM"),
    Case("invalid UTF-8", _jsonl(_request("a")).replace(b"Hi", b"H\xffi"), REFUSE, line=1, why="§6: UTF-8"),
    Case("UTF-16", json.dumps(_request("a")).encode("utf-16") + b"\n", REFUSE, line=1, why="§6: UTF-8"),
    Case("not JSON", _jsonl(_request("a"), b"{custom_id: b}"), REFUSE, line=2, why="§9.3 invalid_json_line"),
    Case("NaN is not JSON", _jsonl(_request("a", temperature=float("nan"))), REFUSE, line=1),
    Case("a JSON array line", _jsonl(_request("a"), b"[1, 2]"), REFUSE, line=2, why="§6: a JSON object"),
    Case("nesting deeper than any parser goes", _jsonl(b"[" * 100_000 + b"]" * 100_000), REFUSE, line=1),
    Case("a duplicate custom_id", _jsonl(_request("a"), _request("b"), _request("a")), REFUSE, line=3),
    Case("an empty custom_id", _jsonl(_request("")), REFUSE, line=1),
    Case("a numeric custom_id", _jsonl({**_request("a"), "custom_id": 7}), REFUSE, line=1),
    Case("method GET", _jsonl(_request("a", method="GET")), REFUSE, line=1, why="§6: only POST"),
    Case("no url", _jsonl({k: v for k, v in _request("a").items() if k != "url"}), REFUSE, line=1),
    Case(
        "a url that is not the endpoint",
        _jsonl(_request("a"), _request("b", url="/v1/embeddings")),
        REFUSE,
        line=2,
        why="§6: every line's url equals the endpoint (url_mismatch)",
    ),
    Case("a url that is no endpoint", _jsonl(_request("a", url="/v1/chat")), REFUSE, line=1),
    Case("no body", _jsonl({k: v for k, v in _request("a").items() if k != "body"}), REFUSE, line=1),
    Case("a body that is a string", _jsonl({**_request("a"), "body": "{}"}), REFUSE, line=1),
    Case(
        "two models",
        _jsonl(_request("a"), _request("b", model="gpt-4o")),
        REFUSE,
        line=2,
        why="§6: one model per file (model_mismatch)",
    ),
    Case("an empty model", _jsonl(_request("a", model="")), REFUSE, line=1),
    Case("chat requests without a model", _jsonl(_without_model("a"), _without_model("b")), REFUSE, line=1),
    Case(
        "a chat request without a model after one with it",
        _jsonl(_request("a"), _without_model("b")),
        REFUSE,
        line=2,
    ),
    Case(
        "moderations without a model",
        _jsonl(_moderation("a"), _moderation("b")),
        ACCEPT,
        endpoint="/v1/moderations",
        why="the endpoint has a default model",
    ),
    Case(
        "moderations with one model",
        _jsonl(_moderation("a", model="omni-moderation-latest"), _moderation("b", model="omni-moderation-latest")),
        ACCEPT,
        endpoint="/v1/moderations",
    ),
    Case(
        "moderations with and without a model",
        _jsonl(_moderation("a", model="omni-moderation-latest"), _moderation("b")),
        REFUSE,
        line=2,
        endpoint="/v1/moderations",
        why="§6: every line's body.model must be the same; a missing one is not the same",
    ),
    Case(
        "image generations without a model",
        _jsonl({"custom_id": "a", "method": "POST", "url": "/v1/images/generations", "body": {"prompt": "a cat"}}),
        ACCEPT,
        endpoint="/v1/images/generations",
    ),
    Case(
        "stream: true",
        _jsonl(_request("a", stream=True)),
        ACCEPT,
        dashboard=REFUSE,
        why="the guide says the batch worker rejects streaming requests when they run, so the API accepts the file "
        "and fails the line later; the dashboard refuses it before a 24 h window is spent",
    ),
    Case(
        "as many requests as a batch holds",
        b"".join(_jsonl(_request(f"r{i}")) for i in range(REQUEST_LIMIT)),
        ACCEPT,
        why="§6: at most 50,000 requests (lowered to REQUEST_LIMIT here; the real limits are compared below)",
    ),
    Case(
        "one request more than a batch holds",
        b"".join(_jsonl(_request(f"r{i}")) for i in range(REQUEST_LIMIT + 1)),
        REFUSE,
        why="§9.3 too_many_tasks",
    ),
]


@pytest.fixture(autouse=True)
def _small_request_limit(monkeypatch):
    """Both validators hold batches of REQUEST_LIMIT requests, so the cases at the limit stay small."""
    monkeypatch.setattr(services, "MAX_REQUESTS_PER_BATCH", REQUEST_LIMIT)
    monkeypatch.setattr(validation, "MAX_REQUESTS_PER_BATCH", REQUEST_LIMIT)


def _dashboard(case: Case) -> tuple[str, set[int | None]]:
    report = validate_jsonl(io.BytesIO(case.content), size=len(case.content))
    numbered = (re.match(r"Line ([\d,]+):", message) for message in report.line_errors)
    lines = {int(match.group(1).replace(",", "")) for match in numbered}
    return (ACCEPT if report.is_valid else REFUSE), lines | ({None} if report.file_errors else set())


def _sandbox(case: Case, tmp_path) -> tuple[str, set[int | None]]:
    path = tmp_path / "input.jsonl"
    path.write_bytes(case.content)
    scan = validation.scan_input(path, case.endpoint)
    return (REFUSE if scan.errors else ACCEPT), {error["line"] for error in scan.errors}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_sandbox_reaches_the_guides_verdict(case, tmp_path):
    verdict, lines = _sandbox(case, tmp_path)
    assert verdict == case.api
    if verdict == REFUSE:
        assert case.line in lines


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_create_form_reaches_the_same_verdict_unless_the_table_says_why_not(case):
    verdict, lines = _dashboard(case)
    assert verdict == case.dashboard_verdict
    if verdict == REFUSE and case.dashboard is None:
        assert case.line in lines


def test_every_difference_between_the_two_is_explained():
    for case in CASES:
        assert case.dashboard in (None, ACCEPT, REFUSE)
        if case.dashboard is not None:
            assert case.dashboard != case.api and case.why, case.name


def test_the_sandbox_and_the_client_state_the_same_rules_apart():
    """Two statements written separately (the sandbox imports nothing from batches) that must still agree."""
    assert rules.ENDPOINTS == services.ENDPOINTS
    assert set(rules.ENDPOINTS_WITHOUT_MODEL) == set(services.ENDPOINTS_WITHOUT_MODEL)
    assert rules.TERMINAL_STATUSES == services.TERMINAL_STATUSES
    assert set(rules.STATUSES) == set(services.STATUSES)
    assert rules.MAX_REQUESTS_PER_BATCH == CLIENT_REQUEST_LIMIT
    assert rules.MAX_INPUT_FILE_BYTES == services.MAX_INPUT_FILE_BYTES
    assert (rules.METADATA_MAX_PAIRS, rules.METADATA_MAX_KEY_LENGTH, rules.METADATA_MAX_VALUE_LENGTH) == (
        services.METADATA_MAX_PAIRS,
        services.METADATA_MAX_KEY_LENGTH,
        services.METADATA_MAX_VALUE_LENGTH,
    )
    assert (rules.EXPIRY_MIN_SECONDS, rules.EXPIRY_MAX_SECONDS, rules.BATCHES_LIST_LIMIT_MAX) == (
        services.OUTPUT_EXPIRY_MIN_SECONDS,
        services.OUTPUT_EXPIRY_MAX_SECONDS,
        services.LIST_LIMIT_MAX,
    )


def test_the_sandbox_imports_nothing_from_the_client():
    from pathlib import Path

    import sandbox

    for module in Path(sandbox.__file__).parent.rglob("*.py"):
        source = module.read_text()
        assert not re.search(r"^\s*(from|import) batches\b", source, re.MULTILINE), module.name
