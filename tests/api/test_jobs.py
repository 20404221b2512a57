"""Retrying lines through the API (the retry page's selections and code, created in the sandbox over HTTP), a job's
final results merged across its retries with their exports, and a batch's files streamed as the pages stream them."""

from __future__ import annotations

import csv
import io
import json

import pytest
import requests

from audit.models import AuditEvent
from batches import services
from batches.models import Batch, record_batch
from tests.api.conftest import TokenClient, error_of, make_token
from tests.conftest import completed, input_line, kept_batch, kept_retry
from tests.fake_api import Reply

pytestmark = pytest.mark.django_db

MIXED = {"a-ok": "ok", "b-429": 429, "c-400": 400, "d-expired": "expired", "e-429": 429, "f-ok": "ok"}


def _sandbox_batches(sandbox_url: str) -> list:
    headers = {"Authorization": "Bearer sk-sandbox"}
    return requests.get(f"{sandbox_url}/batches", headers=headers, timeout=10).json()["data"]


def _retry(client, batch, body: dict, key: str = ""):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(
        f"/api/v1/batches/{batch.batch_id}/retry", body, content_type="application/json", headers=headers
    )


# --- Retrying ---------------------------------------------------------------------------------------------------


def test_it_retries_the_selected_lines_byte_for_byte_once_per_idempotency_key(token_client, sandbox_url, tmp_path):
    parent = kept_batch(MIXED, tmp_path, metadata={"project": "nightly"})

    first = _retry(token_client, parent, {"select": "filter", "status": "429"}, key="retry-1")
    again = _retry(token_client, parent, {"select": "filter", "status": "429"}, key="retry-1")

    assert first.status_code == 201, first.content
    assert again.status_code == 200 and again.json()["repeated"] is True
    body = first.json()
    assert body["lines"] == 2 and body["selection"] == "the lines with status 429"
    assert again.json()["batch"]["id"] == body["batch"]["id"]
    created = _sandbox_batches(sandbox_url)
    assert [batch["id"] for batch in created] == [body["batch"]["id"]]
    assert created[0]["metadata"]["batchboard_retry_of"] == parent.batch_id
    uploaded = b"".join(services.get_client().file_content(created[0]["input_file_id"]))
    assert uploaded == input_line("b-429", 1) + b"\n" + input_line("e-429", 4) + b"\n"
    assert body["batch"]["lineage"] == {
        "retry_of": parent.batch_id,
        "job": parent.batch_id,
        "attempt": 1,
        "verified": True,
        "state": "verified",
        "part_of": "",  # a retry is no part of a split file: it stays in its parent's lineage
        "part": 0,
        "parts": 0,
    }
    events = AuditEvent.objects.filter(action="create", batch_id=body["batch"]["id"]).order_by("pk")
    assert list(events.values_list("outcome", "username")) == [
        ("ok", "operator (token: ci-deploy)"),
        ("already", "operator (token: ci-deploy)"),
    ]


def test_it_answers_409_when_nothing_is_selected_or_nothing_is_kept(token_client, fake_api, tmp_path):
    answered = kept_batch({"a": "ok", "b": "ok"}, tmp_path)
    not_kept = record_batch(completed("batch_notkept1"))

    nothing = error_of(_retry(token_client, answered, {"select": "failed"}), 409)
    unkept = error_of(_retry(token_client, not_kept, {"select": "failed"}), 409)

    assert nothing["code"] == "nothing_to_retry" and "no line that is failed" in nothing["message"]
    assert unkept["code"] == "results_not_ready"
    assert [r for r in fake_api.received if r.method == "POST"] == []
    assert AuditEvent.objects.filter(action="create", outcome="refused", batch_id="").exists()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"select": "everything"}, "invalid_request"),
        ({"select": "filter"}, "invalid_selection"),  # a filter that selects everything is no selection
        ({"select": "filter", "status": "abc"}, "invalid_selection"),
        ({"select": "failed", "completion_window": "1h"}, "invalid_request"),
        ({"select": "failed", "auto_retries": 99}, "invalid_request"),
        ({}, "invalid_request"),
    ],
)
def test_it_refuses_a_bad_selection_and_sends_nothing(token_client, fake_api, tmp_path, body, code):
    parent = kept_batch(MIXED, tmp_path)

    assert error_of(_retry(token_client, parent, body), 400)["code"] == code
    assert [r for r in fake_api.received if r.method == "POST"] == []
    assert not Batch.objects.exclude(pk=parent.pk).exists()


def test_it_needs_the_create_scope_to_retry(operator, fake_api, tmp_path):
    parent = kept_batch(MIXED, tmp_path)
    reader = TokenClient(make_token(operator, "read", "cancel")[1])

    assert error_of(_retry(reader, parent, {"select": "failed"}), 403)["code"] == "insufficient_scope"
    assert fake_api.received == []


# --- The job's final results ------------------------------------------------------------------------------------


@pytest.fixture
def job(tmp_path):
    original = kept_batch({"a": "ok", "b": 429, "c": 500, "d": "expired"}, tmp_path, created_at=1_700_000_000)
    retry = kept_retry(original, {"b": "ok", "c": 429, "d": "ok"}, tmp_path, created_at=1_700_000_100)
    return original, retry


def test_it_pages_a_jobs_final_results_in_input_order(token_client, job):
    original, retry = job
    seen, cursor = [], ""
    while True:
        response = token_client.get(f"/api/v1/batches/{retry.batch_id}/final", {"limit": 3, "cursor": cursor})
        assert response.status_code == 200, response.content
        page = response.json()
        seen += [(row["custom_id"], row["outcome"], row["batch"], row["from_retry"]) for row in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]

    assert seen == [
        ("a", "succeeded", original.batch_id, False),
        ("b", "succeeded", retry.batch_id, True),
        ("c", "failed", retry.batch_id, True),
        ("d", "succeeded", retry.batch_id, True),
    ]
    assert (page["job"], page["batches"], page["pending"]) == (
        original.batch_id,
        [original.batch_id, retry.batch_id],
        [],
    )
    assert (page["total"], page["succeeded"], page["failing"]) == (4, 3, {"failed": 1})
    failing = token_client.get(f"/api/v1/batches/{original.batch_id}/final", {"show": "failing"}).json()
    assert [(row["custom_id"], row["status_code"]) for row in failing["data"]] == [("c", 429)]


def test_it_streams_a_jobs_final_exports_and_audits_them(token_client, job):
    original, retry = job

    csv_response = token_client.get(f"/api/v1/batches/{original.batch_id}/final/export.csv", {"show": "failing"})
    jsonl_response = token_client.get(f"/api/v1/batches/{original.batch_id}/final/export.jsonl")

    assert csv_response.streaming and csv_response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(csv_response.streaming_content).decode("utf-8-sig"))))
    assert [(row[1], row[2], row[8]) for row in rows[1:]] == [("c", "failed", retry.batch_id)]
    lines = [json.loads(line) for line in b"".join(jsonl_response.streaming_content).splitlines()]
    assert [(line["custom_id"], line["outcome"]) for line in lines] == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("c", "failed"),
        ("d", "succeeded"),
    ]
    targets = AuditEvent.objects.filter(action="download", batch_id=original.batch_id).values_list("target", flat=True)
    assert sorted(targets) == [
        f"final results of {original.batch_id} as csv (still failing)",
        f"final results of {original.batch_id} as jsonl",
    ]


def test_it_answers_409_for_a_job_whose_results_are_not_kept(token_client, fake_api):
    batch = record_batch(completed("batch_notkept2"))

    for path in ("final", "final/export.csv", "final/export.jsonl"):
        assert (
            error_of(token_client.get(f"/api/v1/batches/{batch.batch_id}/{path}"), 409)["code"] == "results_not_ready"
        )


def test_it_refuses_a_made_up_final_cursor(token_client, job):
    response = token_client.get(f"/api/v1/batches/{job[0].batch_id}/final", {"cursor": "made-up"})
    assert error_of(response, 400)["code"] == "invalid_cursor"


# --- Files ------------------------------------------------------------------------------------------------------


def test_it_streams_a_file_with_the_pages_headers_and_audits_it(token_client, fake_api):
    batch = record_batch(completed("batch_files1", output_file_id="file-out1"))
    content = b'{"id": "batch_req_1", "custom_id": "request-1"}\n' + bytes(range(256)) * 100
    fake_api.script("GET", "/files/file-out1/content", Reply(200, content, {"Content-Type": "application/binary"}))

    response = token_client.get(f"/api/v1/batches/{batch.batch_id}/files/output")

    assert response.status_code == 200 and response.streaming
    assert b"".join(response.streaming_content) == content
    assert response["Content-Disposition"] == 'attachment; filename="batch_files1-output.jsonl"'
    assert response["Content-Length"] == str(len(content))
    assert response["Cache-Control"].startswith("private, no-store")
    event = AuditEvent.objects.get(action="download", batch_id=batch.batch_id)
    assert (event.outcome, event.target, event.username) == ("ok", "output", "operator (token: ci-deploy)")


def test_it_answers_each_file_failure_in_the_one_shape(token_client, fake_api):
    batch = record_batch(completed("batch_files2", output_file_id="file-gone", error_file_id="file-fails"))
    fake_api.script("GET", "/files/file-gone/content", Reply.example("error.404.file_not_found.json", 404))
    fake_api.script("GET", "/files/file-fails/content", Reply(503, {"error": {"message": "x", "type": "server_error"}}))
    base = f"/api/v1/batches/{batch.batch_id}/files"

    gone = error_of(token_client.get(f"{base}/output"), 404)
    failing = error_of(token_client.get(f"{base}/error"), 502)
    no_input = error_of(token_client.get(f"{base}/input"), 404)  # completed() names file-in: unscripted, a 404

    assert "no longer has file-gone" in gone["message"] and gone["details"] == {"file_id": "file-gone"}
    assert failing["details"] == {"file_id": "file-fails"} and "sk-" not in json.dumps(failing)
    assert no_input["details"] == {"file_id": "file-in"}
    assert error_of(token_client.get(f"{base}/secrets"), 400)["code"] == "invalid_request"
    empty = record_batch(completed("batch_files3", output_file_id=None))
    assert (
        "has no output file"
        in error_of(token_client.get(f"/api/v1/batches/{empty.batch_id}/files/output"), 404)["message"]
    )
