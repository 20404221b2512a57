"""The API's endpoints: the list with the list page's filters and a keyset cursor, a batch, its timeline, cancel,
bulk cancel and create (against the sandbox served by a live server), each error in the one shape, and the OpenAPI
document valid and matching what the endpoints answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from openapi_spec_validator import validate

from audit.models import Action, AuditEvent
from batches.models import Batch, record_batch
from tests.api.conftest import TokenClient, error_of, make_token
from tests.conftest import completed, create_batches, observation

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"


def _at(day: int) -> int:
    return int(datetime(2026, 3, day, 12, tzinfo=UTC).timestamp())


def _line(number: int) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {number}."}]}
    return {"custom_id": f"request-{number}", "method": "POST", "url": CHAT, "body": body}


def _jsonl(count: int = 3) -> bytes:
    return "".join(json.dumps(_line(n)) + "\n" for n in range(1, count + 1)).encode()


def _upload(content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile("requests.jsonl", content, content_type="application/jsonl")


def _sandbox(sandbox_url: str, path: str) -> list:
    answer = requests.get(f"{sandbox_url}{path}", headers={"Authorization": "Bearer sk-sandbox"}, timeout=10)
    return answer.json()["data"]


# --- Listing ----------------------------------------------------------------------------------------------------


def test_it_pages_the_list_by_cursor_newest_first_without_repeating_a_batch(token_client):
    for day in range(1, 8):
        record_batch(completed(f"batch_day{day}", created_at=_at(day)))
    record_batch(completed("batch_day4b", created_at=_at(4)))  # the same second: the id breaks the tie

    seen, cursor = [], ""
    while True:
        page = token_client.get("/api/v1/batches", {"limit": 3, "cursor": cursor}).json()
        seen += [batch["id"] for batch in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]

    expected = list(Batch.objects.order_by("-created_at", "-batch_id").values_list("batch_id", flat=True))
    assert seen == expected and len(seen) == 8
    oldest = token_client.get("/api/v1/batches", {"sort": "created", "limit": 2}).json()
    assert [batch["id"] for batch in oldest["data"]] == ["batch_day1", "batch_day2"]


def test_it_filters_the_list_as_the_list_page_does(token_client):
    record_batch(completed("batch_done1", created_at=_at(1), metadata={"team": "search"}))
    record_batch(observation("batch_run1", created_at=_at(2), metadata={"team": "ads"}))
    record_batch(observation("batch_fail1", "failed", created_at=_at(3)))

    def ids(**query):
        response = token_client.get("/api/v1/batches", query)
        assert response.status_code == 200, response.content
        return [batch["id"] for batch in response.json()["data"]]

    assert ids(status="active") == ["batch_run1"]
    assert ids(status="completed") == ["batch_done1"]
    assert ids(status="failed") == ["batch_fail1"]
    assert "batch_fail1" in ids(status="attention") and "batch_done1" not in ids(status="attention")
    assert ids(q="team:search") == ["batch_done1"]
    assert ids(created_from="2026-03-02", created_to="2026-03-02") == ["batch_run1"]
    assert ids(connection="default", endpoint=CHAT, sort="created") == ["batch_done1", "batch_run1", "batch_fail1"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"status": "sleeping"}, "invalid_request"),
        ({"connection": "someone-elses"}, "invalid_request"),
        ({"created_from": "March"}, "invalid_request"),
        ({"sort": "status"}, "invalid_request"),
        ({"limit": 0}, "invalid_request"),
        ({"limit": "many"}, "invalid_request"),
        ({"cursor": "made-up"}, "invalid_cursor"),
    ],
)
def test_it_refuses_a_bad_list_query_in_the_one_shape(token_client, query, code):
    assert error_of(token_client.get("/api/v1/batches", query), 400)["code"] == code


def test_it_refuses_a_cursor_of_the_other_sort_or_tampered_with(token_client):
    for day in range(1, 4):
        record_batch(completed(f"batch_day{day}", created_at=_at(day)))
    cursor = token_client.get("/api/v1/batches", {"limit": 1}).json()["next_cursor"]

    assert error_of(token_client.get("/api/v1/batches", {"cursor": cursor, "sort": "created"}), 400)
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    assert error_of(token_client.get("/api/v1/batches", {"cursor": tampered}), 400)["code"] == "invalid_cursor"


# --- One batch --------------------------------------------------------------------------------------------------


def test_it_gives_every_field_of_a_batch_with_cost_and_lineage(token_client):
    record_batch(completed("batch_parent1", model="gpt-4o-mini"))
    usage = {"input_tokens": 1000, "output_tokens": 500, "input_tokens_details": {"cached_tokens": 0}}
    record_batch(
        completed(
            "batch_retry1",
            model="gpt-4o-mini",
            usage=usage,
            metadata={"batchboard_retry_of": "batch_parent1", "description": "retry"},
        )
    )

    body = token_client.get("/api/v1/batches/batch_retry1").json()

    assert body["id"] == "batch_retry1" and body["connection"] == "default" and body["status"] == "completed"
    assert body["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert body["usage"]["input_tokens"] == 1000 and body["description"] == "retry"
    assert body["cost_usd"] is not None and float(body["cost_usd"]) > 0
    assert body["lineage"]["retry_of"] == "batch_parent1"
    assert body["results"] == "" and body["failure_groups"] == []


def test_it_answers_404_for_an_unknown_or_malformed_id(token_client, fake_api):
    assert error_of(token_client.get("/api/v1/batches/batch_nothere1"), 404)["code"] == "not_found"
    assert error_of(token_client.get("/api/v1/batches/%20bad%20id"), 404)
    assert error_of(token_client.get("/api/v1/batches/batch_nothere1/timeline"), 404)


def test_it_gives_a_batchs_timeline_oldest_first(token_client):
    record_batch(observation("batch_run1", "validating", processed=0))
    record_batch(observation("batch_run1", "in_progress", processed=4))
    record_batch(completed("batch_run1"))

    body = token_client.get("/api/v1/batches/batch_run1/timeline").json()

    assert [(s["status"], s["request_counts"]["completed"]) for s in body["data"]] == [
        ("validating", 0),
        ("in_progress", 4),
        ("completed", 10),
    ]


# --- Cancelling -------------------------------------------------------------------------------------------------


def test_it_cancels_a_running_batch_once(token_client, sandbox_url):
    (batch,) = create_batches(1, speed=1.0)

    first = token_client.post(f"/api/v1/batches/{batch.id}/cancel")
    again = token_client.post(f"/api/v1/batches/{batch.id}/cancel")

    assert first.status_code == 200, first.content
    assert first.json()["result"] == "cancelled" and first.json()["batch"]["id"] == batch.id
    assert again.status_code == 200 and again.json()["result"] == "already"
    assert _sandbox(sandbox_url, "/batches")[0]["status"] in ("cancelling", "cancelled")
    outcomes = list(AuditEvent.objects.filter(action=Action.CANCEL).values_list("outcome", flat=True))
    assert outcomes == ["already", "ok"]  # newest first


def test_it_answers_409_for_a_batch_that_has_finished(token_client):
    record_batch(completed("batch_done1"))

    error = error_of(token_client.post("/api/v1/batches/batch_done1/cancel"), 409)

    assert error["code"] == "not_cancelled" and error["details"]["batch"]["status"] == "completed"


def test_it_cancels_several_and_reports_each(token_client, sandbox_url):
    running = create_batches(2, speed=1.0)
    record_batch(completed("batch_done1"))
    ids = [running[0].id, f"default/{running[1].id}", "batch_done1", "batch_unknown1"]  # an id may name its connection
    for batch in running:
        token_client.get(f"/api/v1/batches/{batch.id}")  # recorded, as the list would have them

    response = token_client.post("/api/v1/batches/cancel", {"batch_ids": ids}, content_type="application/json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert [(item["id"], item["result"]) for item in body["data"]] == [
        (running[0].id, "cancelled"),
        (running[1].id, "cancelled"),
        ("batch_done1", "error"),
        ("batch_unknown1", "error"),
    ]
    assert (body["cancelled"], body["already"], body["error"]) == (2, 0, 2)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"batch_ids": []}, 400),
        ({"batch_ids": ["not an id"]}, 400),
        ({"batch_ids": "batch_1"}, 400),
        ({}, 400),
        ({"batch_ids": ["batch_1", "no-such-connection/batch_2"]}, 400),  # a connection you may not cancel on
    ],
)
def test_it_refuses_a_bad_bulk_cancel_and_cancels_nothing(token_client, fake_api, body, status):
    response = token_client.post("/api/v1/batches/cancel", body, content_type="application/json")

    error_of(response, status)
    assert fake_api.received == []


def test_it_refuses_a_body_that_is_not_json(token_client, fake_api):
    response = token_client.post("/api/v1/batches/cancel", "{not json", content_type="application/json")

    error_of(response, 400)


# --- Creating ---------------------------------------------------------------------------------------------------


def test_it_creates_a_batch_from_an_upload(token_client, sandbox_url):
    response = token_client.post(
        "/api/v1/batches",
        {"input_file": _upload(_jsonl()), "description": "nightly", "metadata": json.dumps({"team": "search"})},
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["repeated"] is False and body["batch"]["metadata"] == {"description": "nightly", "team": "search"}
    assert [batch["id"] for batch in _sandbox(sandbox_url, "/batches")] == [body["batch"]["id"]]
    event = AuditEvent.objects.get(action=Action.CREATE)
    assert event.username == "operator (token: ci-deploy)" and event.batch_id == body["batch"]["id"]


def test_it_creates_one_batch_per_idempotency_key(token_client, sandbox_url):
    headers = {"Idempotency-Key": "deploy-2026-03-01"}

    first = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl())}, headers=headers)
    again = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl())}, headers=headers)
    other = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl())}, headers={"Idempotency-Key": "b"})

    assert first.status_code == 201 and again.status_code == 200 and other.status_code == 201
    assert again.json()["repeated"] is True and again.json()["batch"]["id"] == first.json()["batch"]["id"]
    assert other.json()["batch"]["id"] != first.json()["batch"]["id"]
    assert len(_sandbox(sandbox_url, "/batches")) == 2


def test_it_reports_a_bad_files_problems_by_line_and_sends_nothing(token_client, sandbox_url):
    lines = _jsonl(2) + b"{not json\n" + json.dumps({**_line(4), "custom_id": "request-1"}).encode() + b"\n"

    error = error_of(token_client.post("/api/v1/batches", {"input_file": _upload(lines)}), 400)

    assert [problem["line"] for problem in error["details"]["lines"]] == [3, 4]
    assert error["details"]["line_error_count"] == 2 and "input_file" in error["details"]["fields"]
    assert _sandbox(sandbox_url, "/batches") == [] and _sandbox(sandbox_url, "/files") == []
    assert AuditEvent.objects.get(action=Action.CREATE).outcome == "refused"


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"input_file_id": "file-abc", "endpoint": ""},
        {"input_file_id": "file-abc", "endpoint": CHAT, "connection": "elsewhere"},
        {"input_file_id": "file-abc", "endpoint": CHAT, "metadata": "[1, 2]"},
        {"input_file_id": "file-abc", "endpoint": CHAT, "output_expires_after_hours": "9999"},
    ],
)
def test_it_refuses_a_bad_create_and_sends_nothing(token_client, fake_api, fields):
    error_of(token_client.post("/api/v1/batches", fields), 400)

    assert fake_api.received == []


def test_it_answers_413_in_the_one_shape_for_a_body_too_large(viewer):
    _token, secret = make_token(viewer)  # a viewer may not create: no large body is read for them

    response = TokenClient(secret).post("/api/v1/batches", {"input_file": _upload(b"x" * (2 * 1024 * 1024))})

    assert error_of(response, 413)["code"] == "too_large"


# --- The OpenAPI document ---------------------------------------------------------------------------------------


def test_it_serves_a_valid_openapi_31_document_that_describes_its_answers(operator_client, token_client, fake_api):
    record_batch(completed("batch_done1"))
    document = operator_client.get("/api/v1/openapi.json").json()

    validate(document)
    assert document["openapi"].startswith("3.1")
    answers = {
        ("/api/v1/batches", "get", "200"): token_client.get("/api/v1/batches"),
        ("/api/v1/batches/{batch_id}", "get", "200"): token_client.get("/api/v1/batches/batch_done1"),
        ("/api/v1/batches/{batch_id}", "get", "404"): token_client.get("/api/v1/batches/batch_nothing"),
        ("/api/v1/batches/{batch_id}/timeline", "get", "200"): token_client.get("/api/v1/batches/batch_done1/timeline"),
        ("/api/v1/batches/{batch_id}/cancel", "post", "409"): token_client.post("/api/v1/batches/batch_done1/cancel"),
        ("/api/v1/batches", "get", "400"): token_client.get("/api/v1/batches", {"status": "x"}),
    }
    for (path, method, status), response in answers.items():
        assert str(response.status_code) == status, (path, response.content)
        schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": document["components"]})


def test_it_documents_the_api_on_a_plain_page_for_signed_in_users(operator_client):
    page = operator_client.get("/api/v1/docs")

    assert page.status_code == 200
    html = page.content.decode()
    assert "/api/v1/openapi.json" in html and "POST /api/v1/batches/{batch_id}/cancel" in html
    assert "cdn" not in html.lower() and '<script src="http' not in html
    assert Client().get("/api/v1/docs").status_code == 302
    assert Client().get("/api/v1/openapi.json").status_code == 302
