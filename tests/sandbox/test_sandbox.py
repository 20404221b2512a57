"""The sandbox API over real HTTP with plain requests, and its simulation as pure functions of an explicit clock."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from batches import services
from sandbox import clock, results, rules, simulation, store, uploads, validation
from sandbox.models import SandboxBatch, SandboxFile, SeedMarker
from sandbox.simulation import Plan, state_at
from tests.spec import spec_errors

# Tests marked once are about the sandbox's HTTP surface and its simulation, which no database changes; the others,
# about its storage (locks, races, ordering, aggregates, seeding), run on both databases.
KEY = {"Authorization": "Bearer sk-sandbox"}
TERMINAL = {"completed", "failed", "expired", "cancelled"}
FAST = 30_000.0  # simulated seconds per real second: a small batch finishes in about a tenth of a second
ORDER = ["validating", "in_progress", "finalizing", "cancelling", "completed", "failed", "expired", "cancelled"]


# --- Helpers -----------------------------------------------------------------


def _chat_line(custom_id, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Hi {custom_id}"}], **body},
    }


def _call(method, url, *, headers=KEY, **kwargs):
    return requests.request(method, url, headers=headers, timeout=30, **kwargs)


def _jsonl(lines):
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def _upload(url, content, *, filename="input.jsonl", purpose="batch", data=None):
    return _call("POST", f"{url}/files", files={"file": (filename, content)}, data={"purpose": purpose, **(data or {})})


def _uploaded_id(url, lines):
    response = _upload(url, _jsonl(lines))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _create(url, file_id, **extra):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    return _call("POST", f"{url}/batches", json=body)


def _batch(url, lines, **extra):
    response = _create(url, _uploaded_id(url, lines), **extra)
    assert response.status_code == 200, response.text
    return response.json()


def _get(url, path, **params):
    return _call("GET", f"{url}{path}", params=params)


def _wait_for(url, batch_id, statuses, *, step=0.03, polls=2000):
    """Poll until the batch is in one of `statuses`, moving the sandbox's clock `step` real seconds between polls
    instead of sleeping; returns every distinct state seen, the last one matching."""
    seen = []
    for _ in range(polls):
        batch = _get(url, f"/batches/{batch_id}").json()
        if not seen or seen[-1] != batch:
            seen.append(batch)
        if batch["status"] in statuses:
            return seen
        clock.advance(step)
    pytest.fail(f"still {batch['status']} after {polls} polls")


def _content(url, file_id):
    response = _get(url, f"/files/{file_id}/content")
    assert response.status_code == 200
    return [json.loads(line) for line in response.text.splitlines()]


def _error(response, status):
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"].startswith("req_")
    assert spec_errors("ErrorResponse", response.json()) == []
    return response.json()["error"]


def _timestamps(batch):
    return {name: batch[name] for name in ("created_at", *simulation.TIMESTAMP_FIELDS, "expires_at")}


def _assert_timeline(states):
    """Timestamps in order, never cleared or changed once set; one terminal timestamp on a terminal batch."""
    before = {}
    for batch in states:
        stamps = _timestamps(batch)
        for name, value in before.items():
            if value is not None:
                assert stamps[name] == value, f"{name} changed from {value} to {stamps[name]}"
        before = stamps
        chain = [stamps["created_at"], stamps["in_progress_at"], stamps["finalizing_at"]]
        chain = [value for value in chain if value is not None]
        assert chain == sorted(chain)
        assert stamps["expires_at"] == stamps["created_at"] + 86400
        if stamps["cancelling_at"] is not None:
            assert stamps["cancelling_at"] >= stamps["created_at"]
        terminal = [name for name in ("completed_at", "failed_at", "expired_at", "cancelled_at") if stamps[name]]
        if batch["status"] in TERMINAL:
            assert terminal == [f"{batch['status']}_at"]
            assert stamps[terminal[0]] >= max(value for value in chain)
        else:
            assert terminal == []
        assert spec_errors("Batch", batch) == []
    statuses = [batch["status"] for batch in states]
    assert statuses == sorted(statuses, key=ORDER.index) or "cancelling" in statuses


def _plan(**overrides):
    values = {
        "created": 1_000_000.0,
        "speed": 1.0,
        "validate_s": 300.0,
        "run_s": 2700.0,
        "finalize_s": 600.0,
        "drain_s": 240.0,
        "total": 4,
        "model": "gpt-4o-mini-2024-07-18",
        "checkpoints": simulation.checkpoints([(True, 10, 0, 5, 0), (False, 0, 0, 0, 0)] * 2),
    }
    values.update(overrides)
    return Plan(**values)


# --- Authentication, ids, routing ---------------------------------------------


@pytest.mark.once
def test_it_requires_a_bearer_key(sandbox_url):
    error = _error(_call("GET", f"{sandbox_url}/batches", headers={}), 401)
    assert error["type"] == "invalid_request_error" and "didn't provide an API key" in error["message"]
    basic = _call("GET", f"{sandbox_url}/batches", headers={"Authorization": "Basic c2stc2FuZGJveA=="})
    _error(basic, 401)


@pytest.mark.once
def test_it_rejects_another_key_and_masks_all_but_its_last_four_characters(sandbox_url):
    key = "sk-proj-secretvalue-9xyz"
    error = _error(_call("GET", f"{sandbox_url}/batches", headers={"Authorization": f"Bearer {key}"}), 401)
    assert error["code"] == "invalid_api_key"
    assert "secretvalue" not in error["message"] and "sk-proj" not in error["message"]
    assert f"provided: {'*' * (len(key) - 4)}9xyz." in error["message"]


@pytest.mark.once
def test_it_answers_unknown_routes_and_methods_with_invalid_url(sandbox_url):
    error = _error(_get(sandbox_url, "/models"), 404)
    assert error["message"] == "Invalid URL (GET /v1/models)"
    assert _error(_call("PUT", f"{sandbox_url}/batches"), 404)["message"] == "Invalid URL (PUT /v1/batches)"
    _error(_call("GET", f"{sandbox_url}/batches/x/cancel"), 404)


@pytest.mark.once
def test_it_gives_every_response_a_fresh_request_id(sandbox_url):
    ids = {_get(sandbox_url, "/batches").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(value.startswith("req_") and len(value) == 36 for value in ids)


@pytest.mark.once
def test_it_answers_404_for_unknown_ids(sandbox_url):
    error = _error(_get(sandbox_url, "/batches/batch_nope"), 404)
    assert error["message"] == "No batch found with id 'batch_nope'."
    error = _error(_get(sandbox_url, "/files/file-nope"), 404)
    assert (error["message"], error["param"]) == ("No such File object: file-nope", "id")
    _error(_get(sandbox_url, "/files/file-nope/content"), 404)
    _error(_call("POST", f"{sandbox_url}/batches/batch_nope/cancel"), 404)
    _error(_call("DELETE", f"{sandbox_url}/files/file-nope"), 404)


# --- Files ---------------------------------------------------------------------


@pytest.mark.once
def test_it_stores_and_returns_the_exact_bytes_of_an_upload(sandbox_url, settings):
    content = _jsonl([_chat_line("ünïcode-✓"), _chat_line("b")]) + b"\r\n"
    uploaded = _upload(sandbox_url, content, filename="Mixed Case.JSONL").json()
    assert spec_errors("OpenAIFile", uploaded) == []
    assert uploaded["bytes"] == len(content) and uploaded["filename"] == "Mixed Case.JSONL"
    assert uploaded["status"] == "processed" and uploaded["purpose"] == "batch"
    assert uploaded["expires_at"] == uploaded["created_at"] + 30 * 86400
    assert (settings.SANDBOX_FILES_DIR / uploaded["id"]).read_bytes() == content
    assert list(settings.SANDBOX_FILES_DIR.glob(".upload-*")) == []

    download = _call(
        "GET", f"{sandbox_url}/files/{uploaded['id']}/content", headers={**KEY, "Accept": "application/binary"}
    )
    assert download.status_code == 200 and download.content == content
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["x-request-id"].startswith("req_")
    assert _get(sandbox_url, f"/files/{uploaded['id']}").json() == uploaded


@pytest.mark.once
def test_it_accepts_expires_after_in_bracket_and_dotted_form(sandbox_url, settings):
    content = _jsonl([_chat_line("a")])
    brackets = _upload(
        sandbox_url, content, data={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    )
    dots = _upload(sandbox_url, content, data={"expires_after.anchor": "created_at", "expires_after.seconds": "7200"})
    assert brackets.json()["expires_at"] == brackets.json()["created_at"] + 3600
    assert dots.json()["expires_at"] == dots.json()["created_at"] + 7200
    other = _upload(sandbox_url, b"notes", filename="notes.txt", purpose="user_data").json()
    # The API keeps such a file until it is deleted; the sandbox expires every file (see test_storage below).
    assert other["expires_at"] == other["created_at"] + settings.SANDBOX_FILE_MAX_AGE


@pytest.mark.once
@pytest.mark.parametrize(
    ("filename", "purpose", "data", "message", "param"),
    [
        ("input.csv", "batch", {}, "Invalid file format for Batch API. Must be .jsonl", "file"),
        ("input.jsonl", "", {}, "Missing required parameter: 'purpose'.", "purpose"),
        ("input.jsonl", "training", {}, None, "purpose"),
        (
            "input.jsonl",
            "batch",
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            None,
            "expires_after.seconds",
        ),
        (
            "input.jsonl",
            "batch",
            {"expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
            None,
            "expires_after.anchor",
        ),
        ("input.jsonl", "batch", {"expires_after[anchor]": "created_at"}, None, "expires_after.seconds"),
        ("input.jsonl", "batch", {"colour": "blue"}, "Unknown parameter: 'colour'.", "colour"),
        ("input.jsonl", "batch", {"expires_after[colour]": "blue"}, None, "expires_after[colour]"),
    ],
)
def test_it_rejects_bad_uploads_and_stores_nothing(sandbox_url, settings, filename, purpose, data, message, param):
    error = _error(_upload(sandbox_url, _jsonl([_chat_line("a")]), filename=filename, purpose=purpose, data=data), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if message:
        assert error["message"] == message
    assert not SandboxFile.objects.exists()
    assert list(settings.SANDBOX_FILES_DIR.iterdir()) == []


@pytest.mark.once
def test_it_rejects_an_upload_without_a_file(sandbox_url):
    response = _call("POST", f"{sandbox_url}/files", files={"purpose": (None, "batch")})
    assert _error(response, 400)["param"] == "file"
    as_field = _call("POST", f"{sandbox_url}/files", files={"purpose": (None, "batch"), "file": (None, "{}")})
    assert _error(as_field, 400)["param"] == "file"


@pytest.mark.once
@pytest.mark.parametrize("content", [{"data": {"purpose": "batch"}}, {"json": {"purpose": "batch"}}, {}])
def test_it_rejects_an_upload_that_is_not_multipart(sandbox_url, content):
    error = _error(_call("POST", f"{sandbox_url}/files", **content), 400)
    assert error["message"].startswith("Invalid Content-Type header (") and "multipart/form-data" in error["message"]


@pytest.mark.once
def test_it_rejects_oversized_or_malformed_bodies(sandbox_url):
    huge = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    huge["metadata"] = {"note": "x" * 3_000_000}
    message = "The request body is too large or malformed."
    assert _error(_call("POST", f"{sandbox_url}/batches", json=huge), 400)["message"] == message
    garbled = _call(
        "POST",
        f"{sandbox_url}/files",
        data=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\nabc',
        headers={**KEY, "Content-Type": "multipart/form-data; boundary="},
    )
    assert _error(garbled, 400)["message"] == message


@pytest.mark.once
def test_it_rejects_batch_inputs_over_the_size_limit(sandbox_url, settings, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_INPUT_FILE_BYTES", 1000)
    error = _error(_upload(sandbox_url, b" " * 1001 + b"\n"), 400)
    assert error["message"] == "File is too large."
    assert _upload(sandbox_url, b" " * 1001, filename="big.txt", purpose="user_data").status_code == 200

    purpose_last = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n' + b" " * 1001 + b"\n"
        b'\r\n--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'
    )
    response = _call(
        "POST",
        f"{sandbox_url}/files",
        data=purpose_last,
        headers={**KEY, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert _error(response, 400)["message"] == "File is too large."

    monkeypatch.setattr(uploads, "MAX_FILE_BYTES", 2000)
    error = _error(_upload(sandbox_url, b"x" * 300_000, filename="huge.txt", purpose="user_data"), 400)
    assert error["message"] == "File is too large."
    assert SandboxFile.objects.count() == 1
    assert len(list(settings.SANDBOX_FILES_DIR.iterdir())) == 1


@pytest.mark.once
def test_it_stops_reading_a_batch_input_at_its_limit_when_the_purpose_comes_first(rf, tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_INPUT_FILE_BYTES", 1000)

    def parse(data):
        handler = uploads.DiskUploadHandler(rf.post("/", data=data), tmp_path, room=10**9)  # parts in the dict's order
        _, files = handler.parse()
        handler.cleanup()
        return handler, files

    first, files = parse({"purpose": "batch", "file": SimpleUploadedFile("a.jsonl", b"x" * 5000)})
    assert first.too_large and not files
    last, files = parse({"file": SimpleUploadedFile("a.jsonl", b"x" * 5000), "purpose": "batch"})
    assert not last.too_large and files["file"].size == 5000  # the view checks it once it knows the purpose
    assert list(tmp_path.iterdir()) == []


def test_storage_refuses_an_upload_over_the_quota_with_the_apis_error_shape(sandbox_url, settings):
    settings.SANDBOX_STORAGE_QUOTA = 1000
    kept = _upload(sandbox_url, b"x" * 600, filename="a.txt", purpose="user_data")
    assert kept.status_code == 200

    for purpose_first in (True, False):  # stopped while streaming, or checked once the purpose is known
        fields = [("purpose", (None, "user_data")), ("file", ("b.txt", b"y" * 500))]
        response = _call("POST", f"{sandbox_url}/files", files=fields if purpose_first else fields[::-1])
        error = _error(response, 400)
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "storage_quota_exceeded",
            "file",
        )
        assert "storage quota of 1,000 bytes (600 bytes are in use)" in error["message"]
    assert [file.id for file in SandboxFile.objects.all()] == [kept.json()["id"]]
    assert [path.name for path in settings.SANDBOX_FILES_DIR.iterdir()] == [kept.json()["id"]]

    assert _call("DELETE", f"{sandbox_url}/files/{kept.json()['id']}").status_code == 200
    assert _upload(sandbox_url, b"y" * 900, filename="b.txt", purpose="user_data").status_code == 200


def test_storage_expires_every_file_and_frees_its_room_at_the_next_upload(sandbox_url, settings, sandbox_clock):
    settings.SANDBOX_STORAGE_QUOTA = 1000
    settings.SANDBOX_FILE_MAX_AGE = 7200
    short = _upload(
        sandbox_url, b"x" * 400, data={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    )
    forever = _upload(sandbox_url, b"x" * 400, filename="notes.txt", purpose="user_data").json()
    long = _upload(sandbox_url, b"x", data={"expires_after[anchor]": "created_at", "expires_after[seconds]": "86400"})
    assert short.json()["expires_at"] == short.json()["created_at"] + 3600
    assert forever["expires_at"] == forever["created_at"] + 7200  # the API would keep it until deleted
    assert long.json()["expires_at"] == long.json()["created_at"] + 7200  # capped at the sandbox's longest lifetime
    assert _error(_upload(sandbox_url, b"y" * 300, filename="c.txt", purpose="user_data"), 400)["code"] == (
        "storage_quota_exceeded"
    )

    sandbox_clock.advance(3601)
    assert _error(_get(sandbox_url, f"/files/{short.json()['id']}"), 404)
    assert _upload(sandbox_url, b"y" * 300, filename="c.txt", purpose="user_data").status_code == 200
    assert not (settings.SANDBOX_FILES_DIR / short.json()["id"]).exists()
    assert not SandboxFile.objects.filter(pk=short.json()["id"]).exists()

    sandbox_clock.advance(3600)
    _upload(sandbox_url, b"z", filename="d.txt", purpose="user_data")
    assert sorted(path.name for path in settings.SANDBOX_FILES_DIR.iterdir()) == sorted(
        file.id for file in SandboxFile.objects.all()
    )
    assert SandboxFile.objects.count() == 2  # c.txt and d.txt; the rest expired


def test_storage_keeps_the_input_of_an_unfinished_batch_past_its_expiry(sandbox_url, settings, sandbox_clock):
    settings.SANDBOX_FILE_MAX_AGE = 3600
    settings.SANDBOX_SPEED = 1.0
    created = _batch(sandbox_url, [_chat_line("a")], metadata={"sandbox_scenario": "slow"})  # runs for ~15 h
    sandbox_clock.advance(3601)
    _upload(sandbox_url, b"x", filename="later.txt", purpose="user_data")
    assert _get(sandbox_url, f"/batches/{created['id']}").json()["status"] == "in_progress"
    assert (settings.SANDBOX_FILES_DIR / created["input_file_id"]).exists()  # expired, but still being read

    batch = SandboxBatch.objects.get(pk=created["id"])
    sandbox_clock.advance(batch.created + batch.validate_s + batch.run_s + batch.finalize_s + 1 - sandbox_clock.now())
    done = _get(sandbox_url, f"/batches/{created['id']}").json()
    assert done["status"] == "completed" and done["output_file_id"]
    results_file = _get(sandbox_url, f"/files/{done['output_file_id']}").json()
    assert results_file["expires_at"] == results_file["created_at"] + 3600
    _upload(sandbox_url, b"x", filename="later.txt", purpose="user_data")
    assert not (settings.SANDBOX_FILES_DIR / created["input_file_id"]).exists()  # now nothing reads it


def test_it_lists_files_by_purpose_in_either_order_with_a_cursor(sandbox_url):
    ids = [_uploaded_id(sandbox_url, [_chat_line(str(i))]) for i in range(3)]
    _upload(sandbox_url, b"x", filename="notes.txt", purpose="user_data")

    newest_first = _get(sandbox_url, "/files", purpose="batch").json()
    assert spec_errors("ListFilesResponse", newest_first) == []
    listed = [file["id"] for file in newest_first["data"]]
    assert sorted(listed) == sorted(ids) and not newest_first["has_more"]
    oldest_first = [file["id"] for file in _get(sandbox_url, "/files", purpose="batch", order="asc").json()["data"]]
    assert oldest_first == list(reversed(listed))

    page = _get(sandbox_url, "/files", purpose="batch", limit=2).json()
    assert page["has_more"] and [f["id"] for f in page["data"]] == listed[:2] and page["last_id"] == listed[1]
    rest = _get(sandbox_url, "/files", purpose="batch", limit=2, after=page["last_id"]).json()
    assert [f["id"] for f in rest["data"]] == listed[2:] and not rest["has_more"]
    assert len(_get(sandbox_url, "/files").json()["data"]) == 4
    assert _get(sandbox_url, "/files", after="file-unknown").json()["data"] == []


@pytest.mark.once
@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"limit": 0}, "limit", "integer_below_min_value"),
        ({"limit": 10001}, "limit", "integer_above_max_value"),
        ({"limit": "ten"}, "limit", "invalid_type"),
        ({"order": "sideways"}, "order", "invalid_value"),
    ],
)
def test_it_rejects_bad_file_list_parameters(sandbox_url, params, param, code):
    error = _error(_get(sandbox_url, "/files", **params), 400)
    assert (error["param"], error["code"]) == (param, code)


def test_it_still_finishes_a_batch_whose_input_was_deleted(sandbox_url, settings):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line(f"r{i}") for i in range(3)])
    assert _call("DELETE", f"{sandbox_url}/files/{created['input_file_id']}").status_code == 200
    _error(_get(sandbox_url, f"/files/{created['input_file_id']}/content"), 404)
    done = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    assert done["status"] == "completed" and len(_content(sandbox_url, done["output_file_id"])) == 3
    assert not (settings.SANDBOX_FILES_DIR / created["input_file_id"]).exists()  # kept only until then


def test_it_deletes_a_file(sandbox_url, settings):
    file_id = _uploaded_id(sandbox_url, [_chat_line("a")])
    response = _call("DELETE", f"{sandbox_url}/files/{file_id}")
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert spec_errors("DeleteFileResponse", response.json()) == []
    _error(_get(sandbox_url, f"/files/{file_id}"), 404)
    _error(_create(sandbox_url, file_id), 400)
    assert not (settings.SANDBOX_FILES_DIR / file_id).exists()


# --- Creating batches ----------------------------------------------------------


@pytest.mark.once
@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"input_file_id": None}, "input_file_id", "missing_required_parameter"),
        ({"endpoint": "/v1/chat"}, "endpoint", "invalid_value"),
        ({"endpoint": 5}, "endpoint", "invalid_type"),
        ({"completion_window": "48h"}, "completion_window", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "object_above_max_properties"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "property_name_above_max_length"),
        ({"metadata": {"note": "v" * 513}}, "metadata.note", "string_above_max_length"),
        ({"metadata": {"count": 3}}, "metadata.count", "invalid_type"),
        ({"metadata": ["a"]}, "metadata", "invalid_type"),
        (
            {"output_expires_after": {"anchor": "created_at", "seconds": 3599}},
            "output_expires_after.seconds",
            "integer_below_min_value",
        ),
        (
            {"output_expires_after": {"anchor": "created_at", "seconds": 2592001}},
            "output_expires_after.seconds",
            "integer_above_max_value",
        ),
        (
            {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
            "output_expires_after.anchor",
            "invalid_value",
        ),
        ({"output_expires_after": 3600}, "output_expires_after", "invalid_type"),
        ({"priority": "high"}, "priority", "unknown_parameter"),
    ],
)
def test_it_rejects_invalid_batch_parameters_and_creates_nothing(sandbox_url, change, param, code):
    file_id = _uploaded_id(sandbox_url, [_chat_line("a")])
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
    body = {key: value for key, value in body.items() if value is not None}
    error = _error(_call("POST", f"{sandbox_url}/batches", json=body), 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert not SandboxBatch.objects.exists()


@pytest.mark.once
def test_it_accepts_metadata_at_the_limits(sandbox_url):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = _batch(sandbox_url, [_chat_line("a")], metadata=metadata)
    assert batch["metadata"] == metadata


@pytest.mark.once
def test_it_rejects_unknown_or_unsuitable_input_files(sandbox_url):
    error = _error(_create(sandbox_url, "file-missing"), 400)
    assert error["param"] == "input_file_id" and "file-missing" in error["message"]
    other = _upload(sandbox_url, b"{}", filename="data.jsonl", purpose="user_data").json()
    error = _error(_create(sandbox_url, other["id"]), 400)
    assert error["param"] == "input_file_id" and "purpose 'user_data'" in error["message"]
    assert _error(_call("POST", f"{sandbox_url}/batches", data="{nope"), 400)["message"].startswith(
        "We could not parse the JSON body"
    )
    assert not SandboxBatch.objects.exists()


@pytest.mark.once
@pytest.mark.parametrize("body", [b"{nope", b"[]", b"null", b"", b"\xff\xfe", b"input_file_id=file-x"])
def test_it_answers_a_create_body_that_is_not_a_json_object_with_400(sandbox_url, body):
    response = _call("POST", f"{sandbox_url}/batches", data=body, headers={**KEY, "Content-Type": "application/json"})
    assert _error(response, 400)["message"].startswith("We could not parse the JSON body")
    assert not SandboxBatch.objects.exists()


# --- Listing batches -------------------------------------------------------------


def test_it_pages_batches_newest_first_with_limit_and_after(sandbox_url):
    file_id = _uploaded_id(sandbox_url, [_chat_line("a")])
    ids = [_create(sandbox_url, file_id).json()["id"] for _ in range(5)]

    first = _get(sandbox_url, "/batches", limit=2).json()
    assert spec_errors("ListBatchesResponse", first) == []
    assert first["has_more"] and len(first["data"]) == 2
    assert (first["first_id"], first["last_id"]) == (first["data"][0]["id"], first["data"][1]["id"])
    walked, after = [], None
    while True:
        page = _get(sandbox_url, "/batches", limit=2, **({"after": after} if after else {})).json()
        walked += page["data"]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert sorted(batch["id"] for batch in walked) == sorted(ids)
    keys = [(batch["created_at"], batch["id"]) for batch in walked]
    assert keys == sorted(keys, reverse=True)

    assert len(_get(sandbox_url, "/batches").json()["data"]) == 5  # default limit 20
    single = _get(sandbox_url, "/batches", limit=1).json()
    assert single["first_id"] == single["last_id"] and single["has_more"]
    last = _get(sandbox_url, "/batches", after=walked[-1]["id"]).json()
    assert last == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert _get(sandbox_url, "/batches", after="batch_unknown").json()["data"] == []


@pytest.mark.once
@pytest.mark.parametrize(
    ("limit", "code"), [(0, "integer_below_min_value"), (101, "integer_above_max_value"), ("x", "invalid_type")]
)
def test_it_rejects_a_batch_list_limit_out_of_range(sandbox_url, limit, code):
    error = _error(_get(sandbox_url, "/batches", limit=limit), 400)
    assert (error["param"], error["code"]) == ("limit", code)


@pytest.mark.once
def test_it_accepts_the_batch_list_limit_bounds(sandbox_url):
    assert _get(sandbox_url, "/batches", limit=1).status_code == 200
    assert _get(sandbox_url, "/batches", limit=100).status_code == 200


# --- Lifecycle over HTTP -----------------------------------------------------------


@pytest.mark.once
def test_it_runs_a_batch_to_completion_with_timestamps_in_order(sandbox_url):
    lines = [_chat_line(f"r{i}") for i in range(40)] + [_chat_line("too-long", max_tokens=100_000)]
    created = _batch(
        sandbox_url, lines, output_expires_after={"anchor": "created_at", "seconds": 7200}, metadata={"team": "qa"}
    )
    assert created["status"] == "validating" and created["usage"] is None and created["model"] is None
    states = [created, *_wait_for(sandbox_url, created["id"], TERMINAL)]
    _assert_timeline(states)
    assert {"in_progress", "completed"} <= {batch["status"] for batch in states}
    done = states[-1]
    assert done["status"] == "completed" and done["request_counts"]["total"] == 41
    counts = [batch["request_counts"]["completed"] + batch["request_counts"]["failed"] for batch in states]
    assert counts == sorted(counts)
    tokens = [batch["usage"]["total_tokens"] for batch in states if batch["usage"]]
    assert tokens == sorted(tokens) and tokens[-1] > 0

    outputs = _content(sandbox_url, done["output_file_id"])
    errors = _content(sandbox_url, done["error_file_id"])
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(line["custom_id"] for line in lines)
    assert "too-long" in {line["custom_id"] for line in errors}
    assert (len(outputs), len(errors)) == (done["request_counts"]["completed"], done["request_counts"]["failed"])
    assert [line["custom_id"] for line in outputs] != [
        line["custom_id"] for line in lines if line["custom_id"] != "too-long"
    ]
    assert sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in outputs) == done["usage"]["input_tokens"]

    output_file = _get(sandbox_url, f"/files/{done['output_file_id']}").json()
    assert output_file["purpose"] == "batch_output" and output_file["expires_at"] == output_file["created_at"] + 7200
    assert output_file["bytes"] == len(_get(sandbox_url, f"/files/{done['output_file_id']}/content").content)
    assert output_file["created_at"] == done["completed_at"]


@pytest.mark.once
def test_it_ends_completed_without_an_output_file_when_every_request_fails(sandbox_url, settings):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line(f"r{i}", max_tokens=50_000) for i in range(3)])
    done = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    assert done["status"] == "completed" and done["output_file_id"] is None
    assert done["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert len(_content(sandbox_url, done["error_file_id"])) == 3


@pytest.mark.once
def test_it_fails_invalid_input_with_line_numbered_errors(sandbox_url):
    good = [_chat_line(f"r{i}") for i in range(1, 10)]
    lines = [
        good[0],
        "{not json",
        {key: value for key, value in good[2].items() if key != "custom_id"},
        {**good[3], "method": "GET"},
        {**good[4], "url": "/v1/embeddings"},
        {**good[5], "body": {**good[5]["body"], "model": "gpt-4.1"}},
        good[0],
        "",
        {**good[8], "body": {"messages": []}},
    ]
    created = _batch(sandbox_url, lines)
    states = [created, *_wait_for(sandbox_url, created["id"], TERMINAL)]
    _assert_timeline(states)
    failed = states[-1]
    assert failed["status"] == "failed" and failed["in_progress_at"] is None
    found = [(error["code"], error["line"], error["param"]) for error in failed["errors"]["data"]]
    assert found == [
        ("invalid_json_line", 2, None),
        ("invalid_request", 3, "custom_id"),
        ("invalid_request", 4, "method"),
        ("url_mismatch", 5, "url"),
        ("model_mismatch", 6, "body.model"),
        ("duplicate_custom_id", 7, "custom_id"),
        ("invalid_json_line", 8, None),
        ("invalid_request", 9, "body.model"),
    ]
    assert failed["output_file_id"] is None and failed["error_file_id"] is None
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert failed["model"] is None


@pytest.mark.once
def test_it_fails_an_empty_file_and_one_with_too_many_requests(sandbox_url, monkeypatch):
    empty = _wait_for(sandbox_url, _batch(sandbox_url, ["", "  "])["id"], TERMINAL)[-1]
    assert [(e["code"], e["line"]) for e in empty["errors"]["data"]] == [("empty_file", None)]

    monkeypatch.setattr(validation, "MAX_REQUESTS_PER_BATCH", 3)
    crowded = _wait_for(sandbox_url, _batch(sandbox_url, [_chat_line(str(i)) for i in range(4)])["id"], TERMINAL)[-1]
    assert crowded["status"] == "failed"
    assert [(e["code"], e["line"]) for e in crowded["errors"]["data"]] == [("too_many_tasks", None)]


SIXTY_MB = 60 * 1024 * 1024
# What refusing an over-long line or uploading any file may allocate (tracemalloc's peak): twice the line cap.
# (Measured: 16 MB to refuse a 60 MB line, 0.2 MB to stream it to disk; the process's RSS stays near 75 MB.)
PEAK_BOUND_BYTES = 2 * rules.MAX_LINE_BYTES
MEASURE_PEAKS = """
import json, sys, tracemalloc
from pathlib import Path

import django

django.setup()
from django.core.handlers.wsgi import WSGIRequest

from sandbox.uploads import DiskUploadHandler
from sandbox.validation import scan_input

line, body, folder = (Path(arg) for arg in sys.argv[1:])
tracemalloc.start()
scan = scan_input(line, "/v1/chat/completions")
validation_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.reset_peak()
with open(body, "rb") as stream:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/", "SERVER_NAME": "test", "SERVER_PORT": "80",
        "wsgi.url_scheme": "http", "wsgi.input": stream, "CONTENT_LENGTH": str(body.stat().st_size),
        "CONTENT_TYPE": "multipart/form-data; boundary=b",
    }
    handler = DiskUploadHandler(WSGIRequest(environ), folder, room=10**12)
    fields, files = handler.parse()
upload_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({
    "errors": scan.errors, "validation_peak": validation_peak, "upload_peak": upload_peak,
    "purpose": fields.get("purpose"), "stored": files["file"].size,
}))
"""


def _one_line_file(path, size):
    """A JSONL request whose single line is `size` bytes long, written without holding it in memory."""
    head, tail = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"note": "', b'"}}'
    with open(path, "wb") as handle:
        handle.write(head)
        block = b"x" * (1024 * 1024)
        for _ in range((size - len(head) - len(tail)) // len(block)):
            handle.write(block)
        handle.write(b"x" * ((size - len(head) - len(tail)) % len(block)) + tail + b"\n")
    return path


@pytest.mark.once
def test_it_refuses_a_sixty_megabyte_line_and_uploads_it_with_bounded_memory(tmp_path, settings):
    line = _one_line_file(tmp_path / "huge.jsonl", SIXTY_MB)
    body = tmp_path / "body"
    with open(body, "wb") as handle, open(line, "rb") as source:
        handle.write(b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n')
        handle.write(b'--b\r\nContent-Disposition: form-data; name="file"; filename="huge.jsonl"\r\n\r\n')
        shutil.copyfileobj(source, handle)
        handle.write(b"\r\n--b--\r\n")
    (tmp_path / "stored").mkdir()
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "DJANGO_SECRET_KEY": "test-only"}
    finished = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAKS, str(line), str(body), str(tmp_path / "stored")],
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    measured = json.loads(finished.stdout)
    assert [(error["code"], error["line"]) for error in measured["errors"]] == [("invalid_request", 1)]
    assert "longer than the limit of 10,485,760 bytes (10 MB)" in measured["errors"][0]["message"]
    assert measured["validation_peak"] < PEAK_BOUND_BYTES, measured
    assert (measured["purpose"], measured["stored"]) == ("user_data", SIXTY_MB + 1)
    assert measured["upload_peak"] < PEAK_BOUND_BYTES, measured


@pytest.mark.once
def test_it_accepts_a_line_at_the_cap_and_refuses_one_byte_more(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "MAX_LINE_BYTES", 200)
    at_cap = json.dumps(_chat_line("a", note="x")).encode()
    at_cap = at_cap.replace(b'"x"', b'"' + b"x" * (200 - len(at_cap) + 1) + b'"')
    assert len(at_cap) == 200
    path = tmp_path / "input.jsonl"
    other = json.dumps(_chat_line("b")).encode()
    for content in (at_cap + b"\n" + other, at_cap + b"\r\n" + other + b"\r\n", other + b"\n" + at_cap):
        path.write_bytes(content)
        assert validation.scan_input(path, "/v1/chat/completions").errors == []
    path.write_bytes(json.dumps(_chat_line("b")).encode() + b"\n" + at_cap[:-2] + b'x"}}\r\n')
    errors = validation.scan_input(path, "/v1/chat/completions").errors
    assert [(error["code"], error["line"]) for error in errors] == [("invalid_request", 2)]


@pytest.mark.once
def test_it_fails_a_batch_whose_line_is_over_the_cap(sandbox_url, monkeypatch):
    monkeypatch.setattr(validation, "MAX_LINE_BYTES", 1000)
    lines = [_chat_line("a"), _chat_line("b", note="x" * 2000), _chat_line("c")]
    created = _batch(sandbox_url, lines)
    failed = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    assert failed["status"] == "failed"
    assert [(error["code"], error["line"]) for error in failed["errors"]["data"]] == [("invalid_request", 2)]


@pytest.mark.once
def test_it_fails_a_file_over_fifty_thousand_requests_without_parsing_past_the_limit(tmp_path):
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"{}\n" * (services.MAX_REQUESTS_PER_BATCH + 1))
    scan = validation.scan_input(path, "/v1/chat/completions")
    assert scan.total == 0 and scan.errors[0]["code"] == "too_many_tasks" and "50,001" in scan.errors[0]["message"]
    assert len(scan.errors) == 1 + validation.MAX_REPORTED_ERRORS


@pytest.mark.once
def test_it_reports_the_enqueued_token_limit_without_a_line(sandbox_url):
    created = _batch(sandbox_url, [_chat_line("a")], metadata={"sandbox_scenario": "token_limit"})
    failed = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    assert [(e["code"], e["line"]) for e in failed["errors"]["data"]] == [("token_limit_exceeded", None)]


@pytest.mark.once
def test_it_cancels_with_partial_results(sandbox_url, settings):
    settings.SANDBOX_SPEED = 60.0  # running for about 45 real seconds: still running when the cancel comes
    lines = [_chat_line(f"r{i}") for i in range(50)]
    created = _batch(sandbox_url, lines)
    while _get(sandbox_url, f"/batches/{created['id']}").json()["request_counts"]["completed"] < 2:
        clock.advance(0.3)

    response = _call("POST", f"{sandbox_url}/batches/{created['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    states = [created, response.json(), *_wait_for(sandbox_url, created["id"], {"cancelled"}, step=0.3)]
    _assert_timeline(states)
    cancelled = states[-1]
    assert cancelled["finalizing_at"] is None and cancelled["completed_at"] is None
    outputs = _content(sandbox_url, cancelled["output_file_id"])
    errors = _content(sandbox_url, cancelled["error_file_id"])
    unrun = [line for line in errors if line["error"]]
    assert unrun and all(line["error"]["code"] == "batch_cancelled" and line["response"] is None for line in unrun)
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(line["custom_id"] for line in lines)
    counts = cancelled["request_counts"]
    assert (counts["completed"], counts["failed"]) == (len(outputs), len(errors) - len(unrun))

    conflict = _call("POST", f"{sandbox_url}/batches/{created['id']}/cancel")
    assert _error(conflict, 409)["message"] == "Cannot cancel a batch with status 'cancelled'."
    assert conflict.headers["x-should-retry"] == "false"


@pytest.mark.once
def test_it_cancels_a_batch_still_validating(sandbox_url, settings):
    settings.SANDBOX_SPEED = 1.0
    created = _batch(sandbox_url, [_chat_line("a")])
    cancelling = _call("POST", f"{sandbox_url}/batches/{created['id']}/cancel").json()
    assert cancelling["status"] == "cancelling" and cancelling["in_progress_at"] is None
    batch = SandboxBatch.objects.get(pk=created["id"])
    later = state_at(batch.plan, batch.cancel_requested + batch.drain_s + 1)
    assert later.status == "cancelled" and later.total == 0 and later.timestamps["in_progress_at"] is None


@pytest.mark.once
def test_it_answers_409_for_cancelling_a_failed_batch(sandbox_url):
    failed = _wait_for(sandbox_url, _batch(sandbox_url, ["oops"])["id"], TERMINAL)[-1]
    response = _call("POST", f"{sandbox_url}/batches/{failed['id']}/cancel")
    assert _error(response, 409)["message"] == "Cannot cancel a batch with status 'failed'."


@pytest.mark.once
def test_it_expires_a_batch_that_outruns_its_window(sandbox_url, settings):
    settings.SANDBOX_SPEED = 300_000.0  # the 24 h window closes after about a third of a second
    lines = [_chat_line(f"r{i}") for i in range(30)]
    created = _batch(sandbox_url, lines, metadata={"sandbox_scenario": "expire"})
    states = [created, *_wait_for(sandbox_url, created["id"], TERMINAL)]
    _assert_timeline(states)
    expired = states[-1]
    assert expired["status"] == "expired" and expired["finalizing_at"] is None
    counts = expired["request_counts"]
    assert counts["completed"] > 0 and counts["completed"] + counts["failed"] < counts["total"] == 30
    outputs = _content(sandbox_url, expired["output_file_id"])
    errors = _content(sandbox_url, expired["error_file_id"])
    unrun = [line for line in errors if line["response"] is None]
    assert {line["error"]["code"] for line in unrun} == {"batch_expired"}
    assert len(unrun) == counts["total"] - counts["completed"] - counts["failed"]
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(line["custom_id"] for line in lines)


@pytest.mark.once
def test_it_keeps_running_at_the_speed_in_force_at_creation(sandbox_url, settings):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line("a")])
    settings.SANDBOX_SPEED = 0.001  # would freeze a new batch for days
    done = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    assert done["status"] == "completed"


@pytest.mark.once
def test_it_survives_its_files_folder_removed_under_it(sandbox_url, settings):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line("a")], metadata={"sandbox_scenario": "x" * 500})
    shutil.rmtree(settings.SANDBOX_FILES_DIR)
    done = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    assert done["status"] == "completed" and done["output_file_id"] is None and done["error_file_id"] is None
    assert done["metadata"] == {"sandbox_scenario": "x" * 500}
    _error(_create(sandbox_url, created["input_file_id"]), 400)
    _error(_get(sandbox_url, f"/files/{created['input_file_id']}/content"), 404)
    assert _get(sandbox_url, f"/files/{created['input_file_id']}").status_code == 200  # what the database knows
    file_id = _uploaded_id(sandbox_url, [_chat_line("b")])  # the folder comes back
    assert [path.name for path in settings.SANDBOX_FILES_DIR.iterdir()] == [file_id]


def test_it_derives_state_from_the_database_alone(sandbox_url, settings):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line(f"r{i}") for i in range(3)])
    done = _wait_for(sandbox_url, created["id"], TERMINAL)[-1]
    stored = SandboxBatch.objects.get(pk=created["id"])
    state = state_at(stored.plan, clock.now())
    assert (state.status, state.completed + state.failed, state.timestamps["completed_at"]) == (
        "completed",
        3,
        done["completed_at"],
    )
    assert stored.output_file_id == done["output_file_id"] and stored.results_ready


def test_it_writes_result_files_once_under_concurrent_reads(sandbox_url, settings, monkeypatch):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line(f"r{i}") for i in range(30)])
    batch = SandboxBatch.objects.get(pk=created["id"])
    wait = (batch.validate_s + batch.run_s + batch.finalize_s) / batch.speed
    clock.advance(max(batch.created + wait - clock.now(), 0) + 0.05)

    writers = []
    second_writer = threading.Event()
    write = store._write_result_files

    def overlapping_write(batch, state):
        writers.append(batch.id)
        if len(writers) == 1:
            second_writer.wait(timeout=5)  # hold the first writer until another request writes the same files
        else:
            second_writer.set()
        return write(batch, state)

    monkeypatch.setattr(store, "_write_result_files", overlapping_write)

    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(_get(sandbox_url, f"/batches/{created['id']}").json()))
        for _ in range(6)
    ]
    threads += [threading.Thread(target=lambda: answers.append(_get(sandbox_url, "/batches").json()["data"][0]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(writers) >= 2
    assert {answer["status"] for answer in answers} == {"completed"}
    assert len({(answer["output_file_id"], answer["error_file_id"]) for answer in answers}) == 1
    assert SandboxFile.objects.filter(purpose="batch_output").count() == 1 + (answers[0]["error_file_id"] is not None)
    stored = sorted(path.name for path in settings.SANDBOX_FILES_DIR.iterdir())
    assert stored == sorted(SandboxFile.objects.values_list("id", flat=True))  # the losers' copies are gone


def _finish_time(batch):
    """The real time at which a batch created at speed 1 with no cancel completes, plus a second."""
    return batch.created + (batch.validate_s + batch.run_s + batch.finalize_s) / batch.speed + 1


def test_it_starts_again_when_a_cancel_lands_while_results_are_written(sandbox_url, settings):
    settings.SANDBOX_SPEED = 1.0
    created = _batch(sandbox_url, [_chat_line(f"r{i}") for i in range(20)])
    stale = SandboxBatch.objects.get(pk=created["id"])  # read before the cancel, so it will look completed
    store.cancel_batch(stale.id, stale.created + stale.validate_s + stale.run_s / 2, stale.organisation)

    batch, state = store.observe(stale, _finish_time(stale))

    assert state.status == "cancelled" and batch.results_ready and batch.cancel_requested is not None
    errors = (settings.SANDBOX_FILES_DIR / batch.error_file_id).read_text().splitlines()
    assert any(json.loads(line)["error"] for line in errors)  # requests the cancel stopped
    assert SandboxFile.objects.filter(purpose="batch_output").count() == 2
    assert sorted(path.name for path in settings.SANDBOX_FILES_DIR.iterdir()) == sorted(
        SandboxFile.objects.values_list("id", flat=True)
    )


def test_it_refuses_a_cancel_that_arrives_after_another_request_saw_the_batch_finish(sandbox_url):
    created = _batch(sandbox_url, [_chat_line("a")])
    batch = SandboxBatch.objects.get(pk=created["id"])
    store.observe(batch, _finish_time(batch))

    with pytest.raises(store.ApiError) as raised:
        # Sent a moment before, while still finalizing.
        store.cancel_batch(batch.id, _finish_time(batch) - 5, batch.organisation)
    assert (raised.value.status, raised.value.message) == (409, "Cannot cancel a batch with status 'completed'.")
    assert SandboxBatch.objects.get(pk=batch.id).cancel_requested is None


@pytest.mark.once
@pytest.mark.parametrize("file_id", ["..", "%2E%2E", "..%2F..%2Fsecret.txt", "file-..%2Fsecret.txt", "%00"])
def test_it_never_reaches_outside_its_files_folder(sandbox_url, settings, file_id):
    secret = settings.SANDBOX_FILES_DIR.parent / "secret.txt"
    secret.write_text("do not serve")
    for method, path in [
        ("GET", f"/files/{file_id}"),
        ("GET", f"/files/{file_id}/content"),
        ("DELETE", f"/files/{file_id}"),
    ]:
        response = _call(method, f"{sandbox_url}{path}")
        assert _error(response, 404) and "do not serve" not in response.text
    error = _error(_create(sandbox_url, "../secret.txt"), 400)
    assert error["param"] == "input_file_id"
    assert secret.read_text() == "do not serve"


@pytest.mark.once
def test_it_lists_result_files_of_batches_nobody_looked_at(sandbox_url, settings):
    settings.SANDBOX_SPEED = FAST
    created = _batch(sandbox_url, [_chat_line("a")])
    batch = SandboxBatch.objects.get(pk=created["id"])
    lifetime = (batch.validate_s + batch.run_s + batch.finalize_s) / batch.speed
    clock.advance(max(batch.created + lifetime - clock.now(), 0))
    names = [file["filename"] for file in _get(sandbox_url, "/files", purpose="batch_output").json()["data"]]
    assert names == [f"{created['id']}_output.jsonl"]


# --- The simulation as pure functions ----------------------------------------------


@pytest.mark.once
@pytest.mark.parametrize(
    ("overrides", "final"),
    [
        ({}, "completed"),
        ({"errors": ({"code": "empty_file", "message": "x", "param": None, "line": None},), "total": 0}, "failed"),
        ({"run_s": 100_000.0}, "expired"),
        ({"cancel_requested": 1_000_000.0 + 1000}, "cancelled"),
        ({"cancel_requested": 1_000_000.0 + 100}, "cancelled"),
        ({"cancel_requested": 1_000_000.0 + 3100}, "cancelled"),
        ({"cancel_requested": 1_000_000.0 + 99_999}, "completed"),
    ],
)
def test_it_moves_timestamps_only_forward_on_every_path(overrides, final):
    plan = _plan(**overrides)
    states = [state_at(plan, plan.created + seconds) for seconds in range(0, 100_000, 97)]
    as_api = [
        {"status": s.status, "created_at": s.created_at, "expires_at": s.expires_at, **s.timestamps} for s in states
    ]
    before = {}
    for batch in as_api:
        for name in ("created_at", "expires_at", *simulation.TIMESTAMP_FIELDS):
            assert before.get(name) is None or batch[name] == before[name]
        before = batch
        terminal = [name for name in ("completed_at", "failed_at", "expired_at", "cancelled_at") if batch[name]]
        assert terminal == ([f"{batch['status']}_at"] if batch["status"] in TERMINAL else [])
    assert states[-1].status == final
    done = [state.completed + state.failed for state in states]
    assert done == sorted(done)


@pytest.mark.once
def test_it_counts_only_requests_that_ran_when_a_batch_expires():
    plan = _plan(run_s=200_000.0)
    state = state_at(plan, plan.created + 90_000)
    assert state.status == "expired"
    assert state.timestamps["expired_at"] == int(plan.created + simulation.WINDOW_S + simulation.EXPIRE_LAG_S)
    assert state.lines_done < state.total and state.completed + state.failed == state.lines_done
    assert state.unrun_code == "batch_expired"
    just_before = state_at(plan, plan.created + simulation.WINDOW_S + 30)
    assert just_before.status == "in_progress" and just_before.lines_done == state.lines_done


@pytest.mark.once
def test_it_finishes_only_the_requests_in_flight_after_a_cancel():
    """After `cancelling_at` nothing new starts: the requests already running finish, then the counts stop."""
    total = 10_000
    cancelled_after = 1000.0  # simulated seconds: 700 s into a 2,700 s run, about a quarter done
    plan = _plan(
        cancel_requested=1_000_000.0 + cancelled_after,
        total=total,
        checkpoints=simulation.checkpoints([(True, 1, 0, 1, 0)] * total),
    )
    uncancelled = replace(plan, cancel_requested=None)
    settle = plan.drain_s * simulation.IN_FLIGHT_DRAIN_SHARE

    at_cancel = state_at(plan, plan.cancel_requested)
    midway = state_at(plan, plan.cancel_requested + settle / 2)
    settled = state_at(plan, plan.cancel_requested + settle)
    just_before_the_end = state_at(plan, plan.cancel_requested + plan.drain_s - 1)
    cancelled = state_at(plan, plan.cancel_requested + plan.drain_s)
    left_at_cancel = total - at_cancel.lines_done
    step = total // simulation.MAX_CHECKPOINTS  # progress moves a checkpoint at a time

    assert [state.status for state in (at_cancel, midway, settled, just_before_the_end)] == ["cancelling"] * 4
    assert cancelled.status == "cancelled"
    assert cancelled.timestamps["cancelled_at"] == int(plan.cancel_requested + plan.drain_s)
    assert 60 <= plan.drain_s <= 600  # "a few simulated minutes", within the API's "about 10 minutes"
    assert at_cancel.lines_done < midway.lines_done < settled.lines_done
    in_flight = settled.lines_done - at_cancel.lines_done
    assert in_flight <= total * simulation.IN_FLIGHT_S / plan.run_s + step and in_flight < 0.05 * left_at_cancel
    without_cancel = state_at(uncancelled, plan.cancel_requested + plan.drain_s).lines_done - at_cancel.lines_done
    assert in_flight * 4 < without_cancel  # the slope changes at the cancel line
    assert just_before_the_end.lines_done == cancelled.lines_done == settled.lines_done  # then nothing moves
    assert cancelled.completed + cancelled.failed == cancelled.lines_done < total
    assert cancelled.unrun_code == "batch_cancelled"


@pytest.mark.once
def test_it_compresses_timestamps_by_the_speed():
    plan = _plan(speed=60.0)
    done = state_at(plan, plan.created + 3600 / 60 + 1)
    assert done.status == "completed"
    assert done.timestamps["in_progress_at"] == int(plan.created + 5)
    assert done.expires_at == int(plan.created) + 86400


@pytest.mark.once
def test_it_plans_a_small_batch_to_finish_in_about_a_minute_at_speed_60():
    durations = simulation.durations("batch_x", 5)
    total = sum(durations[name] for name in ("validate_s", "run_s", "finalize_s")) / 60
    assert 40 < total < 80


@pytest.mark.once
@pytest.mark.parametrize("endpoint", services.ENDPOINTS)
def test_it_shapes_results_like_each_endpoint(endpoint):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "input": ["a", "b"]}
    body |= {"prompt": "A cat", "dimensions": 8}
    line = {"custom_id": "ok-1", "method": "POST", "url": endpoint, "body": body}
    outcome = results.line_outcome(endpoint, "ok-1", body)
    record = results.result_line("batch_x", endpoint, line, outcome, 1_700_000_000)
    assert spec_errors("BatchRequestOutput", record) == []
    response = record["response"]
    assert response["status_code"] == 200 and response["request_id"].startswith("req_") and record["error"] is None
    expected = {
        "/v1/chat/completions": "chat.completion",
        "/v1/responses": "response",
        "/v1/embeddings": "list",
        "/v1/completions": "text_completion",
        "/v1/videos": "video",
    }
    assert response["body"].get("object") == expected.get(endpoint)
    if endpoint == "/v1/embeddings":
        vectors = [item["embedding"] for item in response["body"]["data"]]
        assert len(vectors) == 2 and all(len(vector) == 8 for vector in vectors)
        assert abs(sum(value * value for value in vectors[0]) - 1) < 1e-3
    again = results.result_line("batch_x", endpoint, line, results.line_outcome(endpoint, "ok-1", body), 1_700_000_000)
    assert again == record  # deterministic, so counts at creation and files written later agree


@pytest.mark.once
def test_it_fails_about_three_percent_of_requests_by_custom_id():
    body = {"model": "gpt-4o-mini", "messages": []}
    outcomes = [results.line_outcome("/v1/chat/completions", f"id-{i}", body) for i in range(4000)]
    failures = [outcome for outcome in outcomes if not outcome.succeeded]
    assert 0.02 < len(failures) / len(outcomes) < 0.04
    assert {outcome.status_code for outcome in failures} == {400, 500}
    assert results.line_outcome("/v1/chat/completions", "x", {"model": "gpt-4o-mini"}).error["param"] == "messages"


def test_it_makes_server_errors_transient_and_content_errors_permanent():
    """A retry (metadata naming its parent or attempt) mostly succeeds where the first attempt failed with a 500,
    fails again at a small seeded rate, and always fails a content error (400) again."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    first = {cid: results.line_outcome("/v1/chat/completions", cid, body) for cid in (f"id-{i}" for i in range(20_000))}
    server_errors = [cid for cid, outcome in first.items() if outcome.status_code == 500]
    content_errors = [cid for cid, outcome in first.items() if outcome.status_code == 400]
    assert len(server_errors) > 200 and len(content_errors) > 100
    attempt = results.attempt_of({"batchboard_retry_of": "batch_abc"})
    assert attempt == 1 and results.attempt_of({"batchboard_attempt": "3"}) == 3 and results.attempt_of(None) == 0
    retried = [results.line_outcome("/v1/chat/completions", cid, body, attempt=attempt) for cid in server_errors]
    failed_again = sum(1 for outcome in retried if not outcome.succeeded)
    assert 0 < failed_again < 0.1 * len(server_errors)
    again = [results.line_outcome("/v1/chat/completions", cid, body, attempt=attempt) for cid in content_errors]
    assert all(outcome.status_code == 400 for outcome in again)
    assert retried == [results.line_outcome("/v1/chat/completions", c, body, attempt=1) for c in server_errors]


def test_a_retry_of_server_errors_mostly_succeeds_in_the_sandbox(sandbox_url):
    """The demo's retry story end to end: lines that failed with 500, sent again as a retry, come back answered."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    failing = [
        cid
        for cid in (f"line-{n}" for n in range(5_000))
        if results.line_outcome("/v1/chat/completions", cid, body).status_code == 500
    ][:40]
    file_id = _uploaded_id(sandbox_url, [_chat_line(cid, messages=body["messages"]) for cid in failing])
    counts = {}
    for label, metadata in (
        ("first", {}),
        ("retry", {"batchboard_retry_of": "batch_parent", "batchboard_attempt": "1"}),
    ):
        batch = _create(sandbox_url, file_id, metadata=metadata).json()
        counts[label] = _wait_for(sandbox_url, batch["id"], {"completed"})[-1]["request_counts"]
    assert counts["first"] == {"total": 40, "completed": 0, "failed": 40}
    assert counts["retry"]["total"] == 40 and counts["retry"]["failed"] < 8


# --- Fault injection ----------------------------------------------------------------


@pytest.mark.once
def test_it_adds_the_configured_latency(sandbox_url, settings):
    settings.SANDBOX_LATENCY = 0.3
    started = time.monotonic()
    assert _get(sandbox_url, "/batches").status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.once
def test_it_fails_every_request_at_error_rate_one(sandbox_url, settings):
    settings.SANDBOX_ERROR_RATE = 1.0
    for _ in range(8):
        response = _get(sandbox_url, "/batches")
        assert response.status_code in (500, 503)
        assert _error(response, response.status_code)["type"] == "server_error"
    settings.SANDBOX_ERROR_RATE = 0.0
    file_id = _uploaded_id(sandbox_url, [_chat_line("a")])
    settings.SANDBOX_ERROR_RATE = 1.0
    assert _create(sandbox_url, file_id).status_code in (500, 503)
    assert not SandboxBatch.objects.exists()


@pytest.mark.once
@pytest.mark.parametrize(
    ("wait", "seconds", "milliseconds"), [(2.0, "2", "2000"), (0.25, "1", "250"), (1.5, "2", "1500")]
)
def test_it_rate_limits_every_request_at_rate_one(sandbox_url, settings, wait, seconds, milliseconds):
    settings.SANDBOX_RATE_LIMIT_RATE = 1.0
    settings.SANDBOX_RETRY_AFTER = wait
    response = _get(sandbox_url, "/batches")
    error = _error(response, 429)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    # retry-after in whole seconds, at least 1, as the spec says; the exact wait in retry-after-ms.
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == (seconds, milliseconds)
    for name in ("limit-requests", "remaining-requests", "reset-requests", "limit-tokens", "remaining-tokens"):
        assert response.headers[f"x-ratelimit-{name}"]


@pytest.mark.once
def test_it_checks_the_key_before_injecting_faults(sandbox_url, settings):
    settings.SANDBOX_ERROR_RATE = 1.0
    _error(_call("GET", f"{sandbox_url}/batches", headers={}), 401)


# --- Seeding ---------------------------------------------------------------------------


def _statuses(url):
    return Counter(batch["status"] for batch in _get(url, "/batches", limit=100).json()["data"])


def test_it_seeds_a_demo_organisation_on_first_use(sandbox_url, settings):
    settings.SANDBOX_SEED = True
    listed = _get(sandbox_url, "/batches", limit=100).json()
    assert spec_errors("ListBatchesResponse", listed) == []
    statuses = Counter(batch["status"] for batch in listed["data"])
    assert sum(statuses.values()) == 36 and not listed["has_more"]
    assert set(statuses) == set(ORDER)
    assert statuses["completed"] >= 10 and statuses["in_progress"] >= 3
    data = listed["data"]
    assert {batch["endpoint"] for batch in data} == {"/v1/chat/completions", "/v1/embeddings", "/v1/responses"}
    assert len({batch["model"] for batch in data if batch["model"]}) >= 6
    assert all(batch["metadata"]["description"] for batch in data)
    assert max(b["created_at"] for b in data) - min(b["created_at"] for b in data) > 12 * 86400
    assert any(b["status"] == "completed" and b["output_file_id"] is None for b in data)
    assert any(b["status"] == "completed" and b["request_counts"]["failed"] for b in data)
    failed_lines = [e["line"] for b in data if b["status"] == "failed" for e in b["errors"]["data"]]
    assert any(line for line in failed_lines)
    for batch in data:
        if batch["status"] != "failed":
            assert _get(sandbox_url, f"/files/{batch['input_file_id']}/content").status_code == 200

    assert _statuses(sandbox_url) == statuses  # idempotent: no second seed
    assert SeedMarker.objects.count() == 1


def test_it_seeds_once_when_requests_race(sandbox_url, settings):
    settings.SANDBOX_SEED = True
    codes = []
    threads = [
        threading.Thread(target=lambda: codes.append(_get(sandbox_url, "/batches").status_code)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * 4
    assert SandboxBatch.objects.count() == 36 and SeedMarker.objects.count() == 1


@pytest.mark.once
def test_it_keeps_seeded_batches_live_for_a_while(db):
    from sandbox.seed import seed_demo

    now = time.time()
    seed_demo(now)
    plans = [batch.plan for batch in SandboxBatch.objects.all()]
    running_in_20_minutes = [p for p in plans if not state_at(p, now + 20 * 60).is_terminal]
    assert len(running_in_20_minutes) >= 4
    assert all(state_at(p, now + 2 * 3600).is_terminal for p in plans)


def test_it_seeds_and_reseeds_from_the_command_line(db, capsys, settings):
    call_command("seed_sandbox")
    out = capsys.readouterr().out
    assert "Seeded 36 demo batches for org-sandbox:" in out
    assert "Seeded 10 demo batches for org-sandbox-second:" in out
    call_command("seed_sandbox")
    assert capsys.readouterr().out.count("already seeded") == 2
    first_ids = set(SandboxBatch.objects.values_list("id", flat=True))
    call_command("seed_sandbox", "--reset")
    by_organisation = Counter(SandboxBatch.objects.values_list("organisation", flat=True))
    assert by_organisation == {"org-sandbox": 36, "org-sandbox-second": 10}
    assert not first_ids & set(SandboxBatch.objects.values_list("id", flat=True))
    stored = {path.name for path in settings.SANDBOX_FILES_DIR.iterdir()}
    assert stored == set(SandboxFile.objects.values_list("id", flat=True))
