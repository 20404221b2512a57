"""The service module over real HTTP: a scripted local server for every edge, and the sandbox end to end."""

import dataclasses
import email.policy
import email.utils
import io
import logging
import os
import socket
import time
import traceback
import tracemalloc

import pytest
import requests
from django.conf import settings as django_settings

from batches import services
from batches.services import (
    ApiBatch,
    AuthenticationFailed,
    BadRequest,
    BatchApiError,
    BatchClient,
    NotFound,
    RateLimited,
    RequestCounts,
    Unavailable,
    Usage,
)
from tests.fake_api import EXAMPLES, FakeApi, Reply, example

# The client against HTTP servers: the wire, which no database changes (the shared budget, kept in the
# database, is tested on both in test_budget.py).
pytestmark = pytest.mark.once

KEY = "sk-test-0123456789SECRETkeyabcd"
BATCH_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("batch.*.json") if p.name != "batch.create.request.json")
FAIL_FAST = {"x-should-retry": "false"}


@pytest.fixture
def api():
    with FakeApi() as server:
        yield server


@pytest.fixture
def delays():
    """The backoff delays the client asked for, recorded instead of slept."""
    return []


@pytest.fixture
def make_client(api, delays):
    clients = []

    def make(**options):
        options = {
            "api_key": KEY,
            "base_url": api.url,
            "sleep": delays.append,
            "timeout": 5.0,
            "connect_timeout": 2.0,
            **options,
        }
        clients.append(BatchClient(**options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client()


def _batch(batch_id, status="in_progress", **fields):
    return {**example(f"batch.{status}.json"), "id": batch_id, **fields}


def _list_page(ids, has_more):
    data = [_batch(batch_id) for batch_id in ids]
    return {
        "object": "list",
        "data": data,
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
        "has_more": has_more,
    }


def _assert_parsed(batch: ApiBatch, payload: dict):
    """Every field of the payload is on the typed Batch with its value (ids "" and null as None)."""
    assert set(payload) - {"object"} <= {f.name for f in dataclasses.fields(ApiBatch)}
    assert batch.id == payload["id"]
    assert batch.status == payload["status"]
    assert batch.endpoint == payload["endpoint"]
    assert batch.completion_window == payload["completion_window"]
    assert batch.model == payload["model"]
    for name in ("input_file_id", "output_file_id", "error_file_id"):
        assert getattr(batch, name) == (payload[name] or None)
    for name in (*services.TIMESTAMP_FIELDS, "expires_at"):
        assert getattr(batch, name) == payload[name], name
    assert batch.request_counts == RequestCounts(**payload["request_counts"])
    usage = payload["usage"]
    assert batch.usage == (
        Usage(
            input_tokens=usage["input_tokens"],
            cached_tokens=usage["input_tokens_details"]["cached_tokens"],
            output_tokens=usage["output_tokens"],
            reasoning_tokens=usage["output_tokens_details"]["reasoning_tokens"],
            total_tokens=usage["total_tokens"],
        )
        if usage
        else None
    )
    errors = (payload["errors"] or {}).get("data") or []
    assert [(e.code, e.message, e.param, e.line) for e in batch.errors] == [
        (e["code"], e["message"], e["param"], e["line"]) for e in errors
    ]
    assert batch.metadata == (payload["metadata"] or {})
    assert batch.raw == payload
    assert batch.is_terminal == (payload["status"] in {"completed", "failed", "expired", "cancelled"})


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- Parsing every example payload -------------------------------------------


def test_it_has_an_example_for_every_status():
    assert {example(name)["status"] for name in BATCH_EXAMPLES} == set(services.STATUSES)


@pytest.mark.parametrize("name", BATCH_EXAMPLES)
def test_it_parses_every_batch_example(api, client, name):
    payload = example(name)
    api.script("GET", f"/batches/{payload['id']}", Reply(body=payload))

    batch = client.retrieve_batch(payload["id"])

    _assert_parsed(batch, payload)


def test_it_parses_a_completed_batch_into_typed_values(api, client):
    api.script("GET", "/batches/batch_abc123", Reply.example("batch.completed.json"))

    batch = client.retrieve_batch("batch_abc123")

    assert batch.status == "completed" and batch.is_terminal and not batch.is_cancellable
    assert batch.request_counts == RequestCounts(total=5, completed=4, failed=1)
    assert batch.usage.total_tokens == 107
    assert batch.file_ids == ("file-abc123", "file-cvaTdG", "file-HOWS94")
    assert batch.metadata == {"customer_id": "user_123456789", "batch_description": "Nightly eval job"}
    assert batch.errors == ()


def test_it_parses_batch_errors_with_their_lines(api, client):
    api.script("GET", "/batches/batch_def456", Reply.example("batch.failed.json"))
    api.script("GET", "/batches/batch_tok", Reply(body={**example("batch.failed.token_limit.json"), "id": "batch_tok"}))

    failed = client.retrieve_batch("batch_def456")
    token_limit = client.retrieve_batch("batch_tok")

    assert [(e.code, e.line, e.param) for e in failed.errors] == [
        ("invalid_json_line", 3, None),
        ("duplicate_custom_id", 5, "custom_id"),
    ]
    assert [(e.code, e.line, e.param) for e in token_limit.errors] == [("token_limit_exceeded", None, None)]


def test_it_reads_cached_and_reasoning_tokens_from_their_details():
    usage = {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 40},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 12},
        "total_tokens": 130,
        "prompt_tokens": 100,  # a legacy key seen on live payloads
    }

    batch = ApiBatch.from_api(_batch("batch_u", usage=usage))

    assert batch.usage == Usage(
        input_tokens=100, cached_tokens=40, output_tokens=30, reasoning_tokens=12, total_tokens=130
    )


def test_it_treats_empty_and_null_file_ids_alike_and_keeps_unknown_fields(api, client):
    payload = {
        **_batch("batch_new", "completed", output_file_id="", error_file_id=None),
        "status": "Completed",  # Azure has sent capitalised statuses
        "brand_new_field": {"nested": [1, 2]},
    }
    api.script("GET", "/batches/batch_new", Reply(body=payload))

    batch = client.retrieve_batch("batch_new")

    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.file_ids == ("file-abc123",)
    assert batch.status == "completed"
    assert batch.raw["brand_new_field"] == {"nested": [1, 2]}


def test_it_tolerates_missing_and_odd_values():
    batch = ApiBatch.from_api(
        {
            "id": "batch_odd",
            "status": "validating",
            "created_at": "yesterday",
            "expires_at": 1711557933.0,
            "errors": {"data": ["not an object"]},
            "metadata": None,
            "usage": None,
            "model": "",
        }
    )

    assert batch.created_at == 0
    assert batch.expires_at == 1711557933
    assert batch.errors == ()
    assert batch.metadata == {}
    assert batch.usage is None
    assert batch.model is None
    assert batch.request_counts == RequestCounts()


def test_it_drops_timestamps_and_clamps_counts_that_no_column_or_date_can_hold():
    batch = ApiBatch.from_api(
        {
            "id": "batch_odd",
            "status": "in_progress",
            "created_at": 1_711_557_933_000,  # milliseconds
            "in_progress_at": -5,
            "expires_at": 1_711_644_333,
            "request_counts": {"total": -1, "completed": 2**40, "failed": 3},
        }
    )

    assert batch.created_at == 0 and batch.in_progress_at is None
    assert batch.expires_at == 1_711_644_333
    assert batch.request_counts == RequestCounts(total=0, completed=2**31 - 1, failed=3)


@pytest.mark.parametrize("name", ["file.batch_input.json", "file.batch_output.json"])
def test_it_parses_file_objects(api, client, name):
    payload = example(name)
    api.script("GET", f"/files/{payload['id']}", Reply(body=payload))

    file = client.retrieve_file(payload["id"])

    assert (file.id, file.bytes, file.created_at, file.filename, file.purpose, file.status, file.expires_at) == (
        payload["id"],
        payload["bytes"],
        payload["created_at"],
        payload["filename"],
        payload["purpose"],
        payload["status"],
        payload["expires_at"],
    )
    assert file.raw == payload


def test_it_parses_every_file_of_the_files_list(api, client):
    for payload in example("files.list.json")["data"]:
        api.script("GET", f"/files/{payload['id']}", Reply(body=payload))

        assert client.retrieve_file(payload["id"]).bytes == payload["bytes"]


def test_it_parses_a_list_page(api, client):
    api.script("GET", "/batches", Reply.example("batches.list.has_more.json"))

    page = client.list_batches(limit=2)

    assert [b.id for b in page.data] == ["batch_pqr678", "batch_abc123"]
    assert page.has_more and (page.first_id, page.last_id) == ("batch_pqr678", "batch_abc123")
    assert api.received[0].query == {"limit": ["2"]}


def test_it_sends_the_create_request_of_the_example(api, client):
    body = example("batch.create.request.json")
    api.script("POST", "/batches", Reply.example("batch.validating.json"))

    batch = client.create_batch(
        input_file_id=body["input_file_id"],
        endpoint=body["endpoint"],
        completion_window=body["completion_window"],
        metadata=body["metadata"],
        output_expires_after=body["output_expires_after"]["seconds"],
    )

    assert api.received[0].json() == body
    assert api.received[0].headers["content-type"] == "application/json"
    assert batch.status == "validating"


def test_it_leaves_optional_create_fields_out(api, client):
    api.script("POST", "/batches", Reply.example("batch.validating.json"))

    client.create_batch(input_file_id="file-abc123", endpoint="/v1/embeddings")

    assert api.received[0].json() == {
        "input_file_id": "file-abc123",
        "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    }


def test_it_cancels(api, client):
    api.script("POST", "/batches/batch_abc123/cancel", Reply.example("batch.cancelling.json"))

    batch = client.cancel_batch("batch_abc123")

    assert batch.status == "cancelling" and batch.cancelling_at
    assert api.received[0].body_size == 0


@pytest.mark.parametrize(
    ("call", "bad_id"),
    [
        ("retrieve_batch", "../files/x"),
        ("retrieve_batch", ""),
        ("retrieve_batch", "batch_a.b"),
        ("cancel_batch", "batch_.."),
        ("retrieve_file", ".."),
        ("file_content", ".."),
        ("file_content", "file-a/../b"),
        ("retrieve_file", "%2E%2E"),
    ],
)
def test_it_refuses_an_id_that_is_not_one_path_segment_without_calling(api, client, call, bad_id):
    # A file id of ".." once made the client call GET /v1/ and GET /v1/content.
    with pytest.raises(services.InvalidId):
        getattr(client, call)(bad_id)

    assert api.received == []


# --- Errors ---------------------------------------------------------------------

ERROR_CASES = [
    ("error.400.file_too_large.json", 400, BadRequest),
    ("error.400.metadata_too_many_keys.json", 400, BadRequest),
    ("error.401.invalid_api_key.json", 401, AuthenticationFailed),
    ("error.404.batch_not_found.json", 404, NotFound),
    ("error.404.file_not_found.json", 404, NotFound),
    ("error.409.cancel_terminal_batch.json", 409, BadRequest),
    ("error.429.insufficient_quota.json", 429, RateLimited),
    ("error.429.rate_limit.json", 429, RateLimited),
]


def test_it_covers_every_error_example():
    names = {p.name for p in EXAMPLES.glob("error.*.json") if not p.name.endswith(".headers.json")}
    assert names == {name for name, _, _ in ERROR_CASES}


@pytest.mark.parametrize(("name", "status", "error_class"), ERROR_CASES)
def test_it_maps_every_error_example_to_its_exception(api, make_client, name, status, error_class):
    headers = {"x-request-id": "req_123"}
    if name == "error.429.rate_limit.json":
        headers = {**example("error.429.rate_limit.headers.json")["headers"], **headers}
    api.script("GET", "/batches/batch_x", Reply.example(name, status, headers=headers))
    details = example(name)["error"]

    with pytest.raises(error_class) as caught:
        make_client(max_retries=0).retrieve_batch("batch_x")

    error = caught.value
    assert (error.status, error.type, error.code, error.param) == (
        status,
        details["type"],
        details["code"],
        details["param"],
    )
    assert error.message == details["message"]
    assert error.request_id == "req_123"
    assert details["message"] in str(error) and "HTTP " + str(status) in str(error) and "req_123" in str(error)
    if name == "error.429.rate_limit.json":
        assert error.retry_after == 1.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_it_does_not_retry_client_errors(api, client, delays, status):
    api.script("GET", "/batches/batch_x", Reply(status, {"error": {"message": "no", "type": "invalid_request_error"}}))

    with pytest.raises(BatchApiError):
        client.retrieve_batch("batch_x")

    assert len(api.received) == 1 and delays == []


def test_it_explains_an_html_error_page_from_a_proxy(api, client, delays):
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>nginx</h1></body></html>"
    api.script("GET", "/batches", Reply(502, page, headers={"Content-Type": "text/html"}))

    with pytest.raises(Unavailable) as caught:
        client.list_batches()

    assert caught.value.status == 502
    assert "HTTP 502" in caught.value.message and "proxy" in caught.value.message
    assert "text/html" in caught.value.message and "<html>" not in caught.value.message
    assert len(api.received) == 3  # a 5xx is retried


def test_it_gives_a_default_message_for_a_plain_text_error(api, client):
    api.script("GET", "/batches/batch_x", Reply(400, b"Bad Request", headers={"Content-Type": "text/plain"}))

    with pytest.raises(BadRequest) as caught:
        client.retrieve_batch("batch_x")

    assert caught.value.message.startswith("The Batch API rejected the request.")
    assert caught.value.type is None and caught.value.code is None


def test_it_does_not_take_a_404_page_that_is_not_the_api_for_a_missing_batch(api, client, delays):
    api.script("GET", "/batches/batch_x", Reply(404, b"<h1>Not Found</h1>", headers={"Content-Type": "text/html"}))

    with pytest.raises(Unavailable) as caught:
        client.retrieve_batch("batch_x")

    assert not isinstance(caught.value, NotFound)
    assert caught.value.status == 404 and "URL" in caught.value.message and "text/html" in caught.value.message
    assert delays == []


def test_it_reads_an_error_given_as_a_plain_string(api, client):
    api.script("GET", "/batches/batch_x", Reply(404, {"error": "no such batch"}))

    with pytest.raises(NotFound) as caught:
        client.retrieve_batch("batch_x")

    assert caught.value.message == "no such batch"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"<html>Please log in to the proxy</html>", headers={"Content-Type": "text/html"}),
        Reply(200, [1, 2, 3]),
        Reply(200, {"object": "batch"}),  # no id
        Reply(200, b""),
        Reply(200, b"[" * 100_000),  # nested past the JSON decoder's recursion limit
    ],
)
def test_it_turns_a_success_that_is_not_the_api_into_an_error(api, client, reply):
    api.script("GET", "/batches/batch_x", reply)

    with pytest.raises(Unavailable) as caught:
        client.retrieve_batch("batch_x")

    assert "not the API's JSON" in caught.value.message and caught.value.status == 200


def test_it_gives_a_default_message_for_an_error_body_nested_too_deep_to_decode(api, client):
    api.script("GET", "/batches/batch_x", Reply(400, b'{"error":' * 50_000))

    with pytest.raises(BadRequest) as caught:
        client.retrieve_batch("batch_x")

    assert caught.value.message.startswith("The Batch API rejected the request.")


def test_it_rejects_a_list_page_without_data(api, client):
    api.script("GET", "/batches", Reply(body={"object": "list", "has_more": False}))

    with pytest.raises(Unavailable):
        client.list_batches()


# --- Retries ----------------------------------------------------------------------

SERVER_ERROR = Reply(503, {"error": {"message": "The server is overloaded.", "type": "server_error"}})


def test_it_retries_a_5xx_and_counts_its_retries(api, client, delays):
    api.script("GET", "/batches/batch_abc123", SERVER_ERROR, SERVER_ERROR, Reply.example("batch.completed.json"))

    batch = client.retrieve_batch("batch_abc123")

    assert batch.id == "batch_abc123"
    assert [r.headers["x-stainless-retry-count"] for r in api.received] == ["0", "1", "2"]
    assert len(delays) == 2
    assert 0.375 <= delays[0] <= 0.5 and 0.75 <= delays[1] <= 1.0


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_it_stops_after_max_retries(api, make_client, delays, max_retries):
    api.script("GET", "/batches/batch_x", SERVER_ERROR)

    with pytest.raises(Unavailable) as caught:
        make_client(max_retries=max_retries).retrieve_batch("batch_x")

    assert len(api.received) == max_retries + 1 and len(delays) == max_retries
    assert caught.value.status == 503 and caught.value.message == "The server is overloaded."


def test_it_backs_off_exponentially_with_jitter_up_to_eight_seconds(api, make_client, delays):
    api.script("GET", "/batches/batch_x", SERVER_ERROR)

    with pytest.raises(Unavailable):
        make_client(max_retries=7).retrieve_batch("batch_x")

    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert len(delays) == len(ceilings)
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0.75 * ceiling <= delay <= ceiling
    assert any(delay < ceiling for delay, ceiling in zip(delays, ceilings, strict=True))  # jitter is applied


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after": "120"}, 120.0),
    ],
)
def test_it_waits_as_long_as_retry_after_says(api, client, delays, headers, expected):
    api.script(
        "GET",
        "/batches",
        Reply(429, example("error.429.rate_limit.json"), headers=headers),
        Reply(body=_list_page(["batch_a"], has_more=False)),
    )

    client.list_batches()

    assert delays == [expected]
    assert len(api.received) == 2


def test_it_reads_retry_after_as_an_http_date(api, client, delays):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    api.script("GET", "/batches", Reply(503, headers={"retry-after": when}), Reply(body=_list_page([], False)))

    client.list_batches()

    assert len(delays) == 1 and 27 <= delays[0] <= 30


@pytest.mark.parametrize("headers", [{"retry-after": "121"}, {"retry-after-ms": "600000"}])
def test_it_does_not_retry_when_asked_to_wait_over_two_minutes(api, client, delays, headers):
    api.script("GET", "/batches", Reply(429, example("error.429.rate_limit.json"), headers=headers))

    with pytest.raises(RateLimited) as caught:
        client.list_batches()

    assert len(api.received) == 1 and delays == []
    assert caught.value.retry_after > services.RETRY_AFTER_CAP


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "0"},
        {"retry-after": "soon"},
        {"retry-after": "-4"},
        {"retry-after": "Wed, 21 Oct 99999 07:28:00 GMT"},  # a date in the right form but past datetime's range
        {"retry-after": "Fri, 1 Jan 10000000000000 00:00:00 GMT"},
    ],
)
def test_it_falls_back_to_backoff_for_unusable_retry_after(api, client, delays, headers):
    api.script("GET", "/batches", Reply(503, headers=headers), Reply(body=_list_page([], False)))

    client.list_batches()

    assert len(delays) == 1 and 0.375 <= delays[0] <= 0.5


def test_it_obeys_x_should_retry_false(api, client, delays):
    api.script("GET", "/batches", Reply(503, headers=FAIL_FAST))

    with pytest.raises(Unavailable):
        client.list_batches()

    assert len(api.received) == 1 and delays == []


def test_it_obeys_x_should_retry_true_on_a_read(api, client):
    api.script("GET", "/batches", Reply(400, {"error": {"message": "later"}}, headers={"x-should-retry": "true"}))

    with pytest.raises(BadRequest):
        client.list_batches()

    assert len(api.received) == 3


@pytest.mark.parametrize("status", [408, 409, 500, 502, 504])
def test_it_retries_a_read_on_the_statuses_the_sdk_retries(api, client, status):
    api.script("GET", "/batches", Reply(status), Reply(body=_list_page([], False)))

    client.list_batches()

    assert len(api.received) == 2


def test_it_does_not_retry_when_out_of_quota(api, client, delays):
    api.script("GET", "/batches", Reply.example("error.429.insufficient_quota.json", 429))

    with pytest.raises(RateLimited) as caught:
        client.list_batches()

    assert caught.value.code == "insufficient_quota"
    assert len(api.received) == 1 and delays == []


def test_it_retries_a_read_after_a_read_timeout(api, make_client, delays):
    api.script("GET", "/batches/batch_abc123", Reply(delay=1.0), Reply.example("batch.completed.json"))

    batch = make_client(timeout=0.2).retrieve_batch("batch_abc123")

    assert batch.status == "completed"
    assert len(api.requests_to("GET", "/batches/batch_abc123")) == 2 and len(delays) == 1


def test_it_retries_a_read_after_the_connection_is_dropped(api, client):
    api.script("GET", "/batches/batch_abc123", Reply(drop=True), Reply.example("batch.completed.json"))

    assert client.retrieve_batch("batch_abc123").status == "completed"
    assert len(api.received) == 2


def test_it_reports_a_read_timeout_when_retries_run_out(api, make_client):
    api.script("GET", "/batches", Reply(delay=1.0))

    with pytest.raises(Unavailable) as caught:
        make_client(timeout=0.2, max_retries=1).list_batches()

    assert "did not answer in time" in caught.value.message and "2 attempts" in caught.value.message
    assert caught.value.status is None


CALLS_WITH_A_TIMEOUT = {
    "retrieve_batch": (("GET", "/batches/batch_x"), lambda c, tmp: c.retrieve_batch("batch_x")),
    "list_batches": (("GET", "/batches"), lambda c, tmp: c.list_batches()),
    "create_batch": (("POST", "/batches"), lambda c, tmp: c.create_batch(input_file_id="f", endpoint="/v1/x")),
    "cancel_batch": (("POST", "/batches/batch_x/cancel"), lambda c, tmp: c.cancel_batch("batch_x")),
    "upload_file": (("POST", "/files"), lambda c, tmp: c.upload_fileobj(io.BytesIO(b"{}\n"), filename="a.jsonl")),
    "retrieve_file": (("GET", "/files/file-x"), lambda c, tmp: c.retrieve_file("file-x")),
    "file_content": (("GET", "/files/file-x/content"), lambda c, tmp: c.file_content("file-x")),
}


@pytest.mark.parametrize("call", CALLS_WITH_A_TIMEOUT)
def test_it_puts_a_read_timeout_on_every_call(api, make_client, tmp_path, call):
    (method, path), invoke = CALLS_WITH_A_TIMEOUT[call]
    api.script(method, path, Reply(delay=1.0))

    started = time.monotonic()
    with pytest.raises(Unavailable, match="did not answer in time"):
        invoke(make_client(timeout=0.2, max_retries=0), tmp_path)

    assert time.monotonic() - started < 0.9  # the call gave up before the server's one-second delay ended


# --- Calls that must not act twice -------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, {"error": {"message": "boom", "type": "server_error"}}),
        Reply(503, headers={"x-should-retry": "true"}),
        Reply(408),
        Reply(409),
        Reply(drop=True),
        Reply(delay=1.0),
    ],
)
def test_it_never_repeats_a_create_that_may_have_reached_the_server(api, make_client, delays, reply):
    api.script("POST", "/batches", reply, Reply.example("batch.validating.json"))

    with pytest.raises(BatchApiError):
        make_client(timeout=0.2).create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")

    assert len(api.requests_arrived("POST", "/batches")) == 1 and delays == []


@pytest.mark.parametrize("reply", [Reply(500), Reply(drop=True), Reply(delay=1.0)])
def test_it_never_repeats_an_upload_that_may_have_reached_the_server(api, make_client, delays, reply):
    api.script("POST", "/files", reply, Reply.example("file.batch_input.json"))

    with pytest.raises(BatchApiError):
        make_client(timeout=0.2).upload_fileobj(io.BytesIO(b'{"a": 1}\n'), filename="in.jsonl")

    assert len(api.requests_arrived("POST", "/files")) == 1 and delays == []


def test_it_repeats_a_create_refused_with_429(api, client, delays):
    api.script(
        "POST",
        "/batches",
        Reply.example("error.429.rate_limit.json", 429, headers={"retry-after": "1"}),
        Reply.example("batch.validating.json"),
    )

    batch = client.create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")

    assert batch.status == "validating"
    assert len(api.requests_to("POST", "/batches")) == 2 and delays == [1.0]


def test_it_does_not_repeat_a_create_refused_with_429_and_told_not_to(api, client):
    api.script("POST", "/batches", Reply(429, example("error.429.rate_limit.json"), headers=FAIL_FAST))

    with pytest.raises(RateLimited):
        client.create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")

    assert len(api.received) == 1


def test_it_repeats_an_upload_refused_with_429_sending_the_whole_file_again(api, client, tmp_path):
    path = tmp_path / "input.jsonl"
    path.write_bytes(os.urandom(200_000))
    api.script("POST", "/files", Reply(429, headers={"retry-after-ms": "10"}), Reply.example("file.batch_input.json"))

    client.upload_file(path)

    first, second = api.requests_to("POST", "/files")
    assert first.body_size == second.body_size > 200_000
    assert first.body_sha256 == second.body_sha256  # the file was read again from its start
    assert _multipart(second)["file"][1] == path.read_bytes()


def test_it_repeats_a_create_that_never_reached_the_server(delays):
    """Connection refused: nothing was sent, so trying again cannot create twice."""
    port = _closed_port()
    servers = []

    def start_server_then_continue(delay):
        delays.append(delay)
        if not servers:
            server = FakeApi(port)
            server.script("POST", "/batches", Reply.example("batch.validating.json"))
            servers.append(server.start())

    client = BatchClient(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", sleep=start_server_then_continue)
    try:
        batch = client.create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")
    finally:
        client.close()
        for server in servers:
            server.stop()

    assert batch.status == "validating"
    assert len(delays) == 1 and len(servers[0].requests_to("POST", "/batches")) == 1


def test_it_repeats_a_create_whose_connection_timed_out(delays):
    """A listening socket whose accept queue is full never completes the TCP handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        client = BatchClient(
            api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=0.2, sleep=delays.append
        )
        try:
            with pytest.raises(Unavailable) as caught:
                client.create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")
        finally:
            client.close()
            for filler in fillers:
                filler.close()

    assert "timed out connecting" in caught.value.message
    assert len(delays) == 2  # both retries were spent: a connect timeout means nothing was sent


def test_it_repeats_a_create_whose_host_does_not_resolve(delays):
    client = BatchClient(api_key=KEY, base_url="http://batchboard-test.invalid/v1", sleep=delays.append)
    try:
        with pytest.raises(Unavailable, match="could not be reached"):
            client.create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")
    finally:
        client.close()

    assert len(delays) == 2  # name resolution failed: the create never left, so it was tried again


def test_it_repeats_a_cancel_but_not_a_conflict(api, client, delays):
    api.script("POST", "/batches/batch_a/cancel", SERVER_ERROR, Reply(body=_batch("batch_a", "cancelling")))
    api.script(
        "POST",
        "/batches/batch_b/cancel",
        Reply.example("error.409.cancel_terminal_batch.json", 409, headers={"x-should-retry": "true"}),
    )

    assert client.cancel_batch("batch_a").status == "cancelling"
    with pytest.raises(BadRequest) as caught:
        client.cancel_batch("batch_b")

    assert len(api.requests_to("POST", "/batches/batch_a/cancel")) == 2
    assert len(api.requests_to("POST", "/batches/batch_b/cancel")) == 1
    assert caught.value.status == 409 and "Cannot cancel" in caught.value.message


def test_it_repeats_a_cancel_after_a_read_timeout(api, make_client):
    api.script("POST", "/batches/batch_a/cancel", Reply(delay=1.0), Reply(body=_batch("batch_a", "cancelling")))

    assert make_client(timeout=0.2).cancel_batch("batch_a").status == "cancelling"
    assert len(api.requests_to("POST", "/batches/batch_a/cancel")) == 2


# --- Pagination -----------------------------------------------------------------------


def _paged(pages: dict):
    """A list route answering by `after` cursor from {after: (ids, has_more)}."""

    def handler(received):
        after = received.query.get("after", [None])[0]
        ids, has_more = pages[after]
        return Reply(body=_list_page(ids, has_more))

    return handler


def test_it_iterates_over_every_page_following_the_last_id(api, client):
    api.route(
        "GET",
        "/batches",
        _paged(
            {
                None: (["batch_b5", "batch_b4"], True),
                "batch_b4": (["batch_b3", "batch_b2"], True),
                "batch_b2": (["batch_b1"], False),
            }
        ),
    )

    ids = [batch.id for batch in client.iter_batches(limit=2)]

    assert ids == ["batch_b5", "batch_b4", "batch_b3", "batch_b2", "batch_b1"]
    assert [r.query for r in api.received] == [
        {"limit": ["2"]},
        {"limit": ["2"], "after": ["batch_b4"]},
        {"limit": ["2"], "after": ["batch_b2"]},
    ]


def test_it_stops_paging_on_an_empty_page_even_if_it_claims_more(api, client):
    api.route("GET", "/batches", _paged({None: (["batch_b2", "batch_b1"], True), "batch_b1": ([], True)}))

    pages = list(client.iter_batch_pages())

    assert [len(p.data) for p in pages] == [2, 0] and not pages[-1].has_more
    assert api.received[0].query == {"limit": ["100"]}


def test_it_stops_paging_when_the_api_ignores_the_cursor(api, client):
    api.script("GET", "/batches", Reply(body=_list_page(["batch_b2", "batch_b1"], has_more=True)))

    with pytest.raises(BatchApiError, match="same page"):
        list(client.iter_batches())

    assert len(api.received) == 2


@pytest.mark.parametrize("limit", [0, 101, -1, True, 2.5])
def test_it_refuses_a_limit_outside_1_to_100(api, client, limit):
    with pytest.raises(ValueError):
        client.list_batches(limit=limit)

    assert api.received == []


@pytest.mark.parametrize("limit", [1, 100])
def test_it_accepts_the_limits_of_the_range(api, client, limit):
    api.script("GET", "/batches", Reply(body=_list_page([], False)))

    client.list_batches(limit=limit)

    assert api.received[0].query == {"limit": [str(limit)]}


# --- Files: upload and download ----------------------------------------------------


def _multipart(received) -> dict[str, tuple[str | None, bytes]]:
    """{field name: (filename, content)} of a multipart body the server kept whole."""
    assert len(received.body) == received.body_size, "body too big to have been kept"
    message = email.message_from_bytes(
        f"Content-Type: {received.headers['content-type']}\r\n\r\n".encode() + received.body,
        policy=email.policy.HTTP,
    )
    return {
        part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
        for part in message.iter_parts()
    }


def test_it_uploads_a_file_with_purpose_batch_and_its_name(api, client, tmp_path):
    content = (EXAMPLES / "batch_input.chat_completions.jsonl").read_bytes()
    path = tmp_path / "batch input ✓.jsonl"
    path.write_bytes(content)
    api.script("POST", "/files", Reply.example("file.batch_input.json"))

    file = client.upload_file(path)

    assert file.id == "file-abc123" and file.purpose == "batch"
    received = api.received[0]
    assert received.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert received.headers["content-length"] == str(received.body_size)
    assert "transfer-encoding" not in received.headers
    parts = _multipart(received)
    assert parts["purpose"] == (None, b"batch")
    assert parts["file"] == ("batch input ✓.jsonl", content)


def test_it_uploads_from_the_current_position_of_an_open_file(api, client):
    handle = io.BytesIO(b"ignored header\n" + b'{"custom_id": "a"}\n')
    handle.seek(len(b"ignored header\n"))
    api.script("POST", "/files", Reply.example("file.batch_input.json"))

    client.upload_fileobj(handle, filename="part.jsonl")

    assert _multipart(api.received[0])["file"] == ("part.jsonl", b'{"custom_id": "a"}\n')


def test_it_keeps_a_hostile_filename_inside_its_header(api, client):
    api.script("POST", "/files", Reply.example("file.batch_input.json"))

    client.upload_fileobj(io.BytesIO(b"{}\n"), filename='x.jsonl"\r\nContent-Type: text/evil\r\n\r\nboo')

    parts = _multipart(api.received[0])
    assert set(parts) == {"purpose", "file"}
    assert parts["file"][1] == b"{}\n"
    assert "\r" not in parts["file"][0] and "\n" not in parts["file"][0]


def test_it_refuses_an_unseekable_upload(api, client):
    class Pipe(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False

    with pytest.raises(ValueError, match="seekable"):
        client.upload_fileobj(Pipe(), filename="a.jsonl")
    assert api.received == []


def test_it_streams_an_upload_without_holding_the_file_in_memory(api, client, tmp_path):
    size = 24 * 1024 * 1024
    path = tmp_path / "big.jsonl"
    with path.open("wb") as handle:
        block = b'{"custom_id": "x", "method": "POST"}\n' * 1024
        while handle.tell() < size:
            handle.write(block)
    size = path.stat().st_size
    api.script("POST", "/files", Reply.example("file.batch_input.json"))

    tracemalloc.start()
    try:
        client.upload_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    received = api.received[0]
    assert size < received.body_size < size + 1024
    assert received.headers["content-length"] == str(received.body_size)
    assert b'name="purpose"\r\n\r\nbatch\r\n' in received.body
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while uploading {size}"


def test_it_downloads_the_exact_bytes_in_chunks(api, client):
    content = os.urandom(1024 * 1024 + 123)
    api.script("GET", "/files/file-cvaTdG/content", Reply(body=content, headers={"Content-Type": "application/jsonl"}))

    download = client.file_content("file-cvaTdG", chunk_size=64 * 1024)
    chunks = list(download)

    assert b"".join(chunks) == content
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= 64 * 1024
    assert download.content_length == len(content) and download.content_type == "application/jsonl"
    assert api.received[0].headers["accept"] == "application/binary"


def test_it_reports_a_download_cut_short(api, client):
    content = os.urandom(512 * 1024)
    api.script("GET", "/files/file-x/content", Reply(body=content, truncate_at=100 * 1024))

    download = client.file_content("file-x", chunk_size=16 * 1024)
    with pytest.raises(Unavailable, match="interrupted"):
        for _chunk in download:
            pass


def test_it_raises_for_a_missing_file_before_any_byte(api, client):
    api.script("GET", "/files/file-doesnotexist/content", Reply.example("error.404.file_not_found.json", 404))

    with pytest.raises(NotFound) as caught:
        client.file_content("file-doesnotexist")

    assert caught.value.param == "id"


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000, "12x"])
def test_it_leaves_the_length_of_a_download_unknown_when_the_header_is_not_a_number(length):
    response = requests.Response()
    response.raw = io.BytesIO(b"{}")
    response.headers["Content-Length"] = length

    download = services.FileContent(response, 1024)

    assert download.content_length is None and b"".join(download) == b"{}"


def test_it_releases_a_download_closed_early(api, make_client):
    api.script("GET", "/files/file-x/content", Reply(body=os.urandom(256 * 1024)))
    api.script("GET", "/batches/batch_abc123", Reply.example("batch.completed.json"))
    client = make_client()

    with client.file_content("file-x", chunk_size=1024) as download:
        next(download)
    assert client.retrieve_batch("batch_abc123").id == "batch_abc123"


# --- Headers and the key -------------------------------------------------------------


def test_it_sends_the_key_and_names_itself(api, client):
    api.script("GET", "/batches", Reply(body=_list_page([], False)))

    client.list_batches()

    headers = api.received[0].headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["user-agent"].startswith(f"batchboard/{django_settings.VERSION} ")
    assert headers["accept"] == "application/json"
    assert "openai-organization" not in headers and "openai-project" not in headers


def test_it_sends_organization_and_project_when_set(api, make_client):
    api.script("GET", "/batches", Reply(body=_list_page([], False)))

    make_client(organization="org-123", project="proj_456").list_batches()

    headers = api.received[0].headers
    assert headers["openai-organization"] == "org-123" and headers["openai-project"] == "proj_456"


def test_it_never_shows_the_key(api, make_client, caplog, delays):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error", "code": KEY}}
    api.script("GET", "/batches", Reply(body=_list_page([], False)))
    api.script("GET", "/batches/batch_x", Reply(401, echo))
    api.script("POST", "/batches", Reply(delay=1.0))
    client = make_client(timeout=0.2)
    unreachable = make_client(base_url=f"http://127.0.0.1:{_closed_port()}/v1")

    client.list_batches()
    errors = []
    for call in (
        lambda: client.retrieve_batch("batch_x"),
        lambda: client.create_batch(input_file_id="f", endpoint="/v1/x"),
        lambda: unreachable.retrieve_batch("batch_x"),
        lambda: client.list_batches(limit=0),
    ):
        with pytest.raises((BatchApiError, ValueError)) as caught:
            call()
        errors.append(caught.value)

    assert api.received[0].headers["authorization"] == f"Bearer {KEY}"  # the key was really used
    assert errors[0].message.startswith("Incorrect API key provided: sk-…abcd")
    shown = [caplog.text, repr(client), repr(client.session.auth), str(dict(client.session.headers))]
    for error in errors:
        shown += [str(error), repr(error), error.args, vars(error), "".join(traceback.format_exception(error))]
    assert "Retrying" in caplog.text and "Starting new HTTP connection" in caplog.text  # the logs were captured
    for text in shown:
        assert KEY not in str(text)
        assert KEY[3:-4] not in str(text)


def test_it_redacts_a_key_echoed_by_a_proxy_error_page(api, client):
    api.script("GET", "/batches", Reply(403, {"error": {"message": f"Key {KEY} is blocked by policy"}}))

    with pytest.raises(AuthenticationFailed) as caught:
        client.list_batches()

    assert KEY not in str(caught.value) and "sk-…abcd" in str(caught.value)


@pytest.mark.django_db  # The configured client counts its calls against the shared budget, in the database.
def test_it_configures_one_client_per_settings(api, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = api.url
    settings.OPENAI_ORG_ID = "org-9"
    settings.OPENAI_PROJECT_ID = ""
    api.script("GET", "/batches", Reply(body=_list_page([], False)))

    first = services.get_client()
    first.list_batches()
    settings.OPENAI_MAX_RETRIES = 5
    second = services.get_client()

    assert services.get_client() is second is not first
    assert second.max_retries == 5
    headers = api.received[0].headers
    assert headers["authorization"] == f"Bearer {django_settings.SANDBOX_API_KEY}"
    assert headers["openai-organization"] == "org-9" and "openai-project" not in headers


# --- The sandbox, end to end over real HTTP -------------------------------------------

INPUT_JSONL = EXAMPLES / "batch_input.chat_completions.jsonl"


@pytest.fixture
def sandbox(sandbox_url, delays):
    """A client of the sandbox served by the live server, recording (not sleeping) its backoff."""
    client = BatchClient(api_key=django_settings.SANDBOX_API_KEY, base_url=sandbox_url, sleep=delays.append)
    yield client
    client.close()


def _uploaded_input(sandbox, tmp_path, name="input.jsonl"):
    path = tmp_path / name
    path.write_bytes(INPUT_JSONL.read_bytes())
    return sandbox.upload_file(path)


def test_it_runs_a_batch_through_the_sandbox(sandbox, settings, tmp_path):
    settings.SANDBOX_SPEED = 1_000_000.0  # the whole simulated day passes in milliseconds
    content = INPUT_JSONL.read_bytes()

    uploaded = _uploaded_input(sandbox, tmp_path)
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(content), "input.jsonl")
    assert uploaded.id.startswith("file-") and uploaded.expires_at
    assert sandbox.retrieve_file(uploaded.id) == uploaded
    assert b"".join(sandbox.file_content(uploaded.id)) == content

    created = sandbox.create_batch(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        metadata={"project": "services test"},
        output_expires_after=3600,
    )
    assert created.status == "validating" and created.input_file_id == uploaded.id
    assert created.metadata == {"project": "services test"}

    done = sandbox.retrieve_batch(created.id)
    assert done.status == "completed" and done.completed_at and done.is_terminal
    assert done.request_counts.total == 5 and done.request_counts.processed == 5
    assert done.usage is not None and done.usage.total_tokens > 0
    output = b"".join(sandbox.file_content(done.output_file_id, chunk_size=256)).splitlines()
    assert len(output) == done.request_counts.completed
    if done.request_counts.failed:
        errors = b"".join(sandbox.file_content(done.error_file_id)).splitlines()
        assert len(errors) == done.request_counts.failed
    assert created.id in [batch.id for batch in sandbox.iter_batches()]


def test_it_pages_through_the_sandbox_list(sandbox, tmp_path):
    uploaded = _uploaded_input(sandbox, tmp_path)
    created = {sandbox.create_batch(input_file_id=uploaded.id, endpoint="/v1/chat/completions").id for _ in range(5)}

    pages = list(sandbox.iter_batch_pages(limit=2))

    assert [len(page.data) for page in pages] == [2, 2, 1]
    assert [page.has_more for page in pages] == [True, True, False]
    walked = [batch.id for page in pages for batch in page.data]
    assert set(walked) == created and len(walked) == 5
    assert walked == [batch.id for batch in sandbox.list_batches(limit=100).data]


def test_it_cancels_in_the_sandbox_once_and_is_refused_for_a_finished_batch(sandbox, settings, tmp_path, delays):
    settings.SANDBOX_SPEED = 1.0  # slow enough to still be running when cancelled
    uploaded = _uploaded_input(sandbox, tmp_path)
    running = sandbox.create_batch(input_file_id=uploaded.id, endpoint="/v1/chat/completions")

    cancelling = sandbox.cancel_batch(running.id)
    again = sandbox.cancel_batch(running.id)

    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert again.status == "cancelling" and again.cancelling_at == cancelling.cancelling_at

    settings.SANDBOX_SPEED = 1_000_000.0
    finished = sandbox.create_batch(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
    assert sandbox.retrieve_batch(finished.id).status == "completed"
    with pytest.raises(BadRequest) as caught:
        sandbox.cancel_batch(finished.id)
    assert caught.value.status == 409 and "completed" in caught.value.message
    assert delays == []


def test_it_gets_not_found_from_the_sandbox(sandbox):
    for call in (
        lambda: sandbox.retrieve_batch("batch_doesnotexist"),
        lambda: sandbox.cancel_batch("batch_doesnotexist"),
        lambda: sandbox.retrieve_file("file-doesnotexist"),
        lambda: sandbox.file_content("file-doesnotexist"),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.status == 404 and caught.value.request_id.startswith("req_")


def test_it_is_refused_by_the_sandbox_with_a_wrong_key(sandbox_url, delays, caplog):
    caplog.set_level(logging.DEBUG)
    wrong_key = "sk-wrong-0123456789abcdefWXYZ"
    client = BatchClient(api_key=wrong_key, base_url=sandbox_url, sleep=delays.append)
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            client.list_batches()
    finally:
        client.close()

    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    assert caught.value.message.startswith("Incorrect API key provided: ") and "WXYZ" in caught.value.message
    assert delays == []
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert wrong_key not in text


def test_it_honours_the_sandbox_rate_limit_headers(sandbox, settings, delays):
    settings.SANDBOX_RATE_LIMIT_RATE = 1.0
    settings.SANDBOX_RETRY_AFTER = 0.25

    with pytest.raises(RateLimited) as caught:
        sandbox.list_batches()

    assert delays == [0.25, 0.25]  # retry-after-ms, twice, then the retries were spent
    assert caught.value.code == "rate_limit_exceeded" and caught.value.retry_after == 0.25


def test_it_retries_sandbox_server_errors_on_reads_but_not_on_create(sandbox, settings, delays):
    settings.SANDBOX_ERROR_RATE = 1.0

    with pytest.raises(Unavailable):
        sandbox.list_batches()
    assert len(delays) == 2

    delays.clear()
    with pytest.raises(Unavailable):
        sandbox.create_batch(input_file_id="file-abc123", endpoint="/v1/chat/completions")
    assert delays == []


def test_it_streams_a_larger_upload_to_the_sandbox_byte_for_byte(sandbox, tmp_path):
    line = INPUT_JSONL.read_bytes().splitlines()[0] + b"\n"
    path = tmp_path / "large.jsonl"
    path.write_bytes(line * (4 * 1024 * 1024 // len(line)))

    uploaded = sandbox.upload_file(path)

    assert uploaded.bytes == path.stat().st_size
    with sandbox.file_content(uploaded.id) as download:
        assert b"".join(download) == path.read_bytes()
