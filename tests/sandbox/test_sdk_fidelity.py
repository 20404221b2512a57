"""The official openai SDK drives the sandbox over real HTTP, and every response conforms to the spec excerpt."""

import json
import re

import openai
import pytest

from sandbox import clock
from tests.reference import EXAMPLES
from tests.spec import spec_errors

# The sandbox's answers as the SDK parses them: the wire format, which no database changes.
pytestmark = pytest.mark.once

EXAMPLE_INPUT = EXAMPLES / "batch_input.chat_completions.jsonl"
SCHEMAS = (
    ("POST", r"/files", "OpenAIFile"),
    ("GET", r"/files", "ListFilesResponse"),
    ("GET", r"/files/[^/]+", "OpenAIFile"),
    ("DELETE", r"/files/[^/]+", "DeleteFileResponse"),
    ("POST", r"/batches", "Batch"),
    ("GET", r"/batches", "ListBatchesResponse"),
    ("GET", r"/batches/[^/]+", "Batch"),
    ("POST", r"/batches/[^/]+/cancel", "Batch"),
)


class SpecRecorder:
    """An httpx response hook: checks each response's body against the schema its operation declares."""

    def __init__(self):
        self.problems = []
        self.responses = []

    def __call__(self, response):
        response.read()
        request = response.request
        path = request.url.path.split("/sandbox/v1", 1)[1]
        self.responses.append((request.method, path, response.status_code))
        if not response.headers.get("x-request-id", "").startswith("req_"):
            self.problems.append(f"{request.method} {path}: no x-request-id")
        if path.endswith("/content") and response.status_code == 200:
            return
        if request.method == "POST" and path == "/batches":
            self._check(f"request {path}", "CreateBatchRequest", json.loads(request.content))
        if response.status_code >= 400:
            schema = "ErrorResponse"
        else:
            schema = next(
                name for method, pattern, name in SCHEMAS if method == request.method and re.fullmatch(pattern, path)
            )
        body = response.json()
        if schema == "ListFilesResponse" and not body["data"]:
            return  # The API sends null first_id/last_id on an empty page although the schema requires strings.
        self._check(f"{request.method} {path}", schema, body)

    def _check(self, where, schema, document):
        self.problems += [f"{where} vs {schema}: {error}" for error in spec_errors(schema, document)]


@pytest.fixture
def recorder():
    return SpecRecorder()


@pytest.fixture
def client(sandbox_url, recorder):
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [recorder]})
    with openai.OpenAI(api_key="sk-sandbox", base_url=sandbox_url, max_retries=0, http_client=http_client) as client:
        yield client
    assert recorder.responses, "no response was checked"
    assert recorder.problems == []


def _wait_for(client, batch_id, statuses, *, step=0.05, polls=2000):
    """Poll until the batch reaches one of `statuses`, moving the sandbox's clock `step` real seconds between
    polls instead of sleeping; returns it and the statuses seen on the way."""
    seen = []
    for _ in range(polls):
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in statuses:
            return batch, seen
        clock.advance(step)
    pytest.fail(f"still {batch.status} after {polls} polls (seen {seen})")


def _jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _upload(client, lines, name="input.jsonl"):
    content = "".join(json.dumps(line) + "\n" if isinstance(line, dict) else line + "\n" for line in lines)
    return client.files.create(file=(name, content.encode(), "application/jsonl"), purpose="batch")


def _chat_lines(count, prefix="req"):
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {i}?"}]},
        }
        for i in range(1, count + 1)
    ]


def test_it_runs_a_batch_to_completion_with_results_that_join_to_the_input(client):
    uploaded = client.files.create(
        file=EXAMPLE_INPUT.open("rb"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 7200}
    )
    assert uploaded.purpose == "batch" and uploaded.bytes == EXAMPLE_INPUT.stat().st_size
    assert uploaded.expires_at == uploaded.created_at + 7200

    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"batch_description": "fidelity"},
    )
    assert created.status == "validating"
    assert created.expires_at == created.created_at + 86400
    batch, seen = _wait_for(client, created.id, {"completed", "failed", "expired", "cancelled"})

    assert batch.status == "completed"
    order = ["validating", "in_progress", "finalizing", "completed"]
    assert seen == sorted(seen, key=order.index)
    assert batch.model == "gpt-4o-mini-2024-07-18"
    assert batch.metadata == {"batch_description": "fidelity"}
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at

    inputs = _jsonl(EXAMPLE_INPUT.read_text())
    outputs = _jsonl(client.files.content(batch.output_file_id).text)
    errors = _jsonl(client.files.content(batch.error_file_id).text)
    joined = sorted(line["custom_id"] for line in outputs + errors)
    assert joined == sorted(line["custom_id"] for line in inputs)
    assert {line["custom_id"] for line in errors} == {"request-4"}  # asks for max_tokens 100000
    assert batch.request_counts.total == 5
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(outputs), len(errors))

    for line in outputs + errors:
        assert spec_errors("BatchRequestOutput", line) == []
        assert line["id"].startswith("batch_req_") and line["response"]["request_id"].startswith("req_")
    for line in outputs:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["response"]["body"]["object"] == "chat.completion"
    for line in errors:
        assert line["response"]["status_code"] == 400 and line["error"] is None
        assert line["response"]["body"]["error"]["param"] == "max_tokens"
    usage = [line["response"]["body"]["usage"] for line in outputs]
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage)
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens

    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"
    assert output_file.filename == f"{batch.id}_output.jsonl"
    listed = {f.id for f in client.files.list(purpose="batch_output")}
    assert listed == {batch.output_file_id, batch.error_file_id}


def test_it_fails_a_bad_file_with_line_numbered_errors(client):
    lines = _chat_lines(5)
    lines[1] = '{"custom_id": "req-2", "method": "POST", broken'
    lines[3]["custom_id"] = "req-1"
    uploaded = _upload(client, lines)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch, seen = _wait_for(client, batch.id, {"failed", "completed"})

    assert seen == ["validating", "failed"] or seen == ["failed"]
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", 2), ("duplicate_custom_id", 4)]
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.in_progress_at is None and batch.failed_at >= batch.created_at
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (0, 0, 0)


def test_it_cancels_through_cancelling_to_cancelled_with_partial_results(client, settings):
    settings.SANDBOX_SPEED = 60.0  # a run of about 45 real seconds, so it is still running when cancelled
    uploaded = _upload(client, _chat_lines(60))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    while (batch := client.batches.retrieve(batch.id)).request_counts.completed < 3:
        assert batch.status in ("validating", "in_progress")
        clock.advance(0.5)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    again = client.batches.cancel(batch.id)
    assert again.status == "cancelling" and again.cancelling_at == cancelling.cancelling_at
    batch, _ = _wait_for(client, batch.id, {"cancelled"}, step=0.5)

    assert batch.cancelled_at >= batch.cancelling_at >= batch.in_progress_at
    assert batch.completed_at is None and batch.finalizing_at is None
    outputs = _jsonl(client.files.content(batch.output_file_id).text)
    errors = _jsonl(client.files.content(batch.error_file_id).text)
    unrun = [line for line in errors if line["response"] is None]
    assert {line["error"]["code"] for line in unrun} == {"batch_cancelled"}
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(f"req-{i}" for i in range(1, 61))
    counts = batch.request_counts
    assert counts.completed == len(outputs) and counts.failed == len(errors) - len(unrun)
    assert counts.completed + counts.failed < counts.total == 60

    with pytest.raises(openai.ConflictError) as raised:
        client.batches.cancel(batch.id)
    assert raised.value.body["message"] == "Cannot cancel a batch with status 'cancelled'."


def test_it_lists_more_than_a_hundred_batches_through_auto_pagination_newest_first(client, recorder):
    uploaded = _upload(client, _chat_lines(2))
    created = [
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h").id
        for _ in range(103)
    ]

    listed = list(client.batches.list())
    ids = [batch.id for batch in listed]
    assert sorted(ids) == sorted(created) and len(set(ids)) == len(ids)
    keys = [(batch.created_at, batch.id) for batch in listed]
    assert keys == sorted(keys, reverse=True)
    pages = [path for method, path, _ in recorder.responses if method == "GET" and path == "/batches"]
    assert len(pages) == 6  # 20 per page by default


def test_it_answers_errors_as_the_sdk_expects(client, sandbox_url):
    with pytest.raises(openai.NotFoundError) as raised:
        client.batches.retrieve("batch_doesnotexist")
    assert raised.value.body["message"] == "No batch found with id 'batch_doesnotexist'."
    assert raised.value.request_id.startswith("req_")

    with pytest.raises(openai.NotFoundError) as raised:
        client.files.content("file-doesnotexist")
    assert raised.value.param == "id"

    with pytest.raises(openai.BadRequestError) as raised:
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert raised.value.param == "input_file_id"

    with pytest.raises(openai.BadRequestError) as raised:
        client.batches.create(
            input_file_id="file-nope",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"priority": "high"},
        )
    assert (raised.value.code, raised.value.param) == ("unknown_parameter", "priority")

    with pytest.raises(openai.BadRequestError) as raised:
        client.files.create(file=("notes.txt", b"hello", "text/plain"), purpose="batch")
    assert raised.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"

    stranger = openai.OpenAI(api_key="sk-wrong-key-abcd", base_url=sandbox_url, max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as raised:
        stranger.batches.list()
    assert raised.value.code == "invalid_api_key"
    assert "sk-wrong" not in raised.value.message and raised.value.message.count("abcd") == 1


def test_it_stops_the_sdk_retrying_a_cancel_of_a_finished_batch(sandbox_url, recorder):
    """The SDK retries 409s unless told otherwise; the sandbox says x-should-retry: false."""
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [recorder]})
    with openai.OpenAI(api_key="sk-sandbox", base_url=sandbox_url, max_retries=3, http_client=http_client) as client:
        lines = [json.dumps(line) for line in _chat_lines(2)]
        lines[1] = lines[1].replace('"POST"', '"GET"')
        uploaded = _upload(client, lines)
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch, _ = _wait_for(client, batch.id, {"failed"})
        assert batch.errors.data[0].code == "invalid_request" and batch.errors.data[0].line == 2
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
    cancels = [r for r in recorder.responses if r[1].endswith("/cancel")]
    assert cancels == [("POST", f"/batches/{batch.id}/cancel", 409)]
    assert recorder.problems == []


def test_it_rate_limits_with_the_headers_the_sdk_reads(client, settings):
    settings.SANDBOX_RATE_LIMIT_RATE = 1.0
    settings.SANDBOX_RETRY_AFTER = 3.0
    with pytest.raises(openai.RateLimitError) as raised:
        client.batches.list()
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["retry-after"] == "3"
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"
