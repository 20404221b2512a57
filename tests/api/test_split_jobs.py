"""The JSON API's create splits a file over the API's limits as the create page does, answers the job, and is
idempotent for the whole file; a job is read and cancelled at /api/v1/jobs/{id}, its answers as the schema says."""

from __future__ import annotations

import json

import jsonschema
import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from batches import services
from batches.models import Batch
from tests.conftest import kept_batch
from tests.fake_api import Reply, example

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"


def _jsonl(count: int) -> bytes:
    lines = [
        {"custom_id": f"r{n}", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini", "messages": []}}
        for n in range(1, count + 1)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _upload(content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile("input.jsonl", content, content_type="application/jsonl")


def _part_number(batch: dict) -> int:
    """In part order (parts made in the same second have no other order)."""
    return int(batch["metadata"].get("batchboard_part", 0))


def _sandbox_batches(sandbox_url: str) -> list[dict]:
    answer = requests.get(f"{sandbox_url}/batches", headers={"Authorization": "Bearer sk-sandbox"}, timeout=10)
    return sorted(answer.json()["data"], key=_part_number)


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch):
    """Parts of at most 2 requests: a 5-line file is 3 parts."""
    monkeypatch.setattr(services, "MAX_REQUESTS_PER_BATCH", 2)


def _validate(document: dict, path: str, method: str, response) -> None:
    status = str(response.status_code)
    schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), {**schema, "components": document["components"]})


def test_it_splits_an_upload_into_a_job_once_per_idempotency_key(token_client, operator_client, sandbox_url, settings):
    settings.SANDBOX_SPEED = 1.0  # the parts still run when the job is cancelled at the end
    headers = {"Idempotency-Key": "nightly-2026-12-06"}
    document = operator_client.get("/api/v1/openapi.json").json()

    first = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl(5))}, headers=headers)
    again = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl(5))}, headers=headers)

    assert first.status_code == 201, first.content
    assert again.status_code == 200 and again.json()["repeated"] is True
    created = _sandbox_batches(sandbox_url)
    assert len(created) == 3
    job = first.json()["job"]
    assert job == {"id": created[0]["id"], "parts": [batch["id"] for batch in created], "part_count": 3}
    assert again.json()["job"] == job and first.json()["batch"]["id"] == job["id"]
    lineage = first.json()["batch"]["lineage"]
    assert (lineage["part_of"], lineage["part"], lineage["parts"]) == (job["id"], 1, 3)
    _validate(document, "/api/v1/batches", "post", first)
    assert AuditEvent.objects.filter(action="create", username="operator (token: ci-deploy)").count() == 6

    read = token_client.get(f"/api/v1/jobs/{job['parts'][1]}")
    assert read.status_code == 200, read.content
    body = read.json()
    assert body["id"] == job["id"] and body["part_count"] == 3 and body["missing_parts"] == []
    assert [(part["part"], part["batch"]["id"]) for part in body["parts"]] == list(enumerate(job["parts"], start=1))
    assert body["finished"] is False and body["retries"] == []
    _validate(document, "/api/v1/jobs/{batch_id}", "get", read)

    cancelled = token_client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.content
    assert sorted(item["id"] for item in cancelled.json()["results"]) == sorted(job["parts"])
    assert {item["result"] for item in cancelled.json()["results"]} == {"cancelled"}
    _validate(document, "/api/v1/jobs/{batch_id}/cancel", "post", cancelled)
    assert {batch["status"] for batch in _sandbox_batches(sandbox_url)} <= {"cancelling", "cancelled"}


def test_it_names_the_parts_sent_when_one_fails_and_the_same_key_sends_the_rest(token_client, fake_api):
    file_reply = Reply(200, {**example("file.batch_input.json"), "id": "file-up1", "purpose": "batch"})
    fake_api.script("POST", "/files", file_reply)
    body = {**example("batch.validating.json"), "input_file_id": "file-up1"}
    part1 = Reply(200, {**body, "id": "batch_p1", "metadata": {"batchboard_part": "1", "batchboard_parts": "3"}})
    fake_api.script("POST", "/batches", part1, Reply(503, {"error": {"message": "busy"}}))
    headers = {"Idempotency-Key": "k1"}

    failed = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl(5))}, headers=headers)

    assert failed.status_code == 502
    error = failed.json()["error"]
    assert "Part 2 of 3 was not sent" in error["message"]
    assert error["details"] == {"part_count": 3, "sent_parts": ["batch_p1"]}

    later = {"batchboard_job": "batch_p1", "batchboard_parts": "3"}
    fake_api.script(
        "POST",
        "/batches",
        Reply(200, {**body, "id": "batch_p2", "metadata": {**later, "batchboard_part": "2"}}),
        Reply(200, {**body, "id": "batch_p3", "metadata": {**later, "batchboard_part": "3"}}),
    )
    resumed = token_client.post("/api/v1/batches", {"input_file": _upload(_jsonl(5))}, headers=headers)
    assert resumed.status_code == 201, resumed.content
    assert resumed.json()["job"]["parts"] == ["batch_p1", "batch_p2", "batch_p3"]
    sent = [
        json.loads(request.body)["metadata"]["batchboard_part"] for request in fake_api.requests_to("POST", "/batches")
    ]
    assert sent == ["1", "2", "2", "3"]
    assert Batch.objects.filter(part_of="batch_p1").count() == 3


@pytest.fixture
def kept_split_job(tmp_path):
    """A job of two parts whose results are kept: part 1 answers a1..a4, part 2 answers b1..b3 (b2 failed)."""
    first = kept_batch(
        dict.fromkeys(["a1", "a2", "a3", "a4"], "ok"),
        tmp_path,
        metadata={"batchboard_part": "1", "batchboard_parts": "2"},
    )
    later = {"batchboard_part": "2", "batchboard_parts": "2", "batchboard_job": first.batch_id}
    second = kept_batch({"b1": "ok", "b2": 500, "b3": "ok"}, tmp_path, metadata=later)
    return first, second


def test_the_final_results_page_through_a_split_job_in_file_order(token_client, kept_split_job):
    first, second = kept_split_job
    seen, cursor = [], ""
    for _page in range(5):
        response = token_client.get(f"/api/v1/batches/{second.batch_id}/final", {"limit": 3, "cursor": cursor})
        assert response.status_code == 200, response.content
        page = response.json()
        seen += [(row["line_number"], row["custom_id"], row["outcome"]) for row in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [
        (1, "a1", "succeeded"),
        (2, "a2", "succeeded"),
        (3, "a3", "succeeded"),
        (4, "a4", "succeeded"),
        (5, "b1", "succeeded"),
        (6, "b2", "failed"),
        (7, "b3", "succeeded"),
    ]
    assert page["job"] == first.batch_id and page["total"] == 7 and page["succeeded"] == 6
