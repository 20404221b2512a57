"""The sandbox's two organisations, its Azure-flavoured path and its gateway-style ids, over real HTTP with requests.

Issue 19's connections are tried against these: the first organisation at /sandbox/v1 with `Bearer sk-sandbox`,
the second with `sk-sandbox-second`, and either one at /sandbox/openai/v1 with an `api-key` header.
"""

import base64
import json
import re
from collections import Counter

import pytest
import requests
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from sandbox.models import SandboxBatch, SandboxFile, SeedMarker
from tests.spec import spec_errors

FIRST = {"Authorization": "Bearer sk-sandbox"}
SECOND = {"Authorization": "Bearer sk-sandbox-second"}
AZURE_FIRST = {"api-key": "sk-sandbox"}
AZURE_SECOND = {"api-key": "sk-sandbox-second"}
GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@pytest.fixture
def azure_url(sandbox_url):
    return sandbox_url.removesuffix("/sandbox/v1") + "/sandbox/openai/v1"


def _call(method, url, headers, **kwargs):
    return requests.request(method, url, headers=headers, timeout=30, **kwargs)


def _line(custom_id):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Hi {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _upload(url, headers, count=2, prefix="r"):
    content = "".join(json.dumps(_line(f"{prefix}{i}")) + "\n" for i in range(count)).encode()
    response = _call("POST", f"{url}/files", headers, files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return response.json()


def _create(url, headers, file_id):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    return _call("POST", f"{url}/batches", headers, json=body)


def _batch(url, headers, **upload):
    response = _create(url, headers, _upload(url, headers, **upload)["id"])
    assert response.status_code == 200, response.text
    return response.json()


def _finished(url, headers, batch_id, sandbox_clock):
    for _ in range(500):
        batch = _call("GET", f"{url}/batches/{batch_id}", headers).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        sandbox_clock.advance(60)
    pytest.fail(f"batch still {batch['status']}")


def _error(response, status):
    assert response.status_code == status, response.text
    assert spec_errors("ErrorResponse", response.json()) == []
    return response.json()["error"]


def _listed_ids(url, headers, collection, **params):
    response = _call("GET", f"{url}/{collection}", headers, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]]


# --- Two organisations ------------------------------------------------------------


def test_it_lists_only_the_batches_and_files_of_the_organisation_asking(sandbox_url, sandbox_clock):
    mine = _batch(sandbox_url, FIRST)
    theirs = _batch(sandbox_url, SECOND)
    other_theirs = _batch(sandbox_url, SECOND)
    assert {mine["id"], theirs["id"], other_theirs["id"]} == set(SandboxBatch.objects.values_list("id", flat=True))

    assert _listed_ids(sandbox_url, FIRST, "batches") == [mine["id"]]
    assert set(_listed_ids(sandbox_url, SECOND, "batches")) == {theirs["id"], other_theirs["id"]}
    assert _listed_ids(sandbox_url, FIRST, "files") == [mine["input_file_id"]]
    assert set(_listed_ids(sandbox_url, SECOND, "files")) == {theirs["input_file_id"], other_theirs["input_file_id"]}

    # Result files belong to the batch's organisation too.
    done = _finished(sandbox_url, SECOND, theirs["id"], sandbox_clock)
    assert done["status"] == "completed" and done["output_file_id"]
    assert done["output_file_id"] in _listed_ids(sandbox_url, SECOND, "files")
    assert done["output_file_id"] not in _listed_ids(sandbox_url, FIRST, "files")
    assert SandboxFile.objects.get(pk=done["output_file_id"]).organisation == "org-sandbox-second"


def test_it_answers_another_organisations_ids_exactly_as_unknown_ones(sandbox_url, sandbox_clock):
    theirs = _batch(sandbox_url, SECOND)
    done = _finished(sandbox_url, SECOND, theirs["id"], sandbox_clock)
    running = _batch(sandbox_url, SECOND)
    unknown_batch, unknown_file = "batch_" + "0" * 32, "file-" + "0" * 22

    for batch_id in (theirs["id"], running["id"]):
        for method, path in (("GET", f"/batches/{batch_id}"), ("POST", f"/batches/{batch_id}/cancel")):
            error = _error(_call(method, f"{sandbox_url}{path}", FIRST), 404)
            expected = _error(_call(method, f"{sandbox_url}{path.replace(batch_id, unknown_batch)}", FIRST), 404)
            assert error == {**expected, "message": expected["message"].replace(unknown_batch, batch_id)}
    for file_id in (theirs["input_file_id"], done["output_file_id"]):
        for method, path in (
            ("GET", f"/files/{file_id}"),
            ("GET", f"/files/{file_id}/content"),
            ("DELETE", f"/files/{file_id}"),
        ):
            error = _error(_call(method, f"{sandbox_url}{path}", FIRST), 404)
            expected = _error(_call(method, f"{sandbox_url}{path.replace(file_id, unknown_file)}", FIRST), 404)
            assert error == {**expected, "message": expected["message"].replace(unknown_file, file_id)}

    # Nothing changed for the owner: the running batch was not cancelled, the files were not deleted.
    still_running = _call("GET", f"{sandbox_url}/batches/{running['id']}", SECOND).json()
    assert still_running["status"] not in ("cancelling", "cancelled")
    assert _call("GET", f"{sandbox_url}/files/{theirs['input_file_id']}", SECOND).status_code == 200
    content = _call("GET", f"{sandbox_url}/files/{done['output_file_id']}/content", SECOND)
    assert content.status_code == 200 and len(content.text.splitlines()) == 2
    assert not SandboxFile.objects.filter(deleted=True).exists()

    # Another organisation's file cannot start a batch, nor page a list.
    error = _error(_create(sandbox_url, FIRST, theirs["input_file_id"]), 400)
    assert error["message"] == f"Invalid 'input_file_id': no file with id '{theirs['input_file_id']}' exists."
    _batch(sandbox_url, FIRST)
    assert _listed_ids(sandbox_url, FIRST, "batches", after=theirs["id"]) == []
    assert _listed_ids(sandbox_url, FIRST, "files", after=theirs["input_file_id"]) == []
    assert SandboxBatch.objects.filter(organisation="org-sandbox").count() == 1


def test_it_lets_each_organisation_cancel_only_its_own_batches(sandbox_url, settings):
    settings.SANDBOX_SPEED = 1.0  # real time: at the tests' usual speed a busy machine lets them finish first
    theirs = _batch(sandbox_url, SECOND)
    mine = _batch(sandbox_url, FIRST)
    _error(_call("POST", f"{sandbox_url}/batches/{theirs['id']}/cancel", FIRST), 404)
    cancelled = _call("POST", f"{sandbox_url}/batches/{theirs['id']}/cancel", SECOND)
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelling", "cancelled")
    assert SandboxBatch.objects.get(pk=mine["id"]).cancel_requested is None
    assert SandboxBatch.objects.get(pk=theirs["id"]).cancel_requested is not None


def test_it_seeds_the_second_organisation_apart_from_the_first(sandbox_url, settings):
    settings.SANDBOX_SEED = True
    second = _call("GET", f"{sandbox_url}/batches", SECOND, params={"limit": 100}).json()
    assert SeedMarker.objects.get().name == "demo-second"  # the first organisation is seeded on its own first use
    statuses = Counter(batch["status"] for batch in second["data"])
    assert sum(statuses.values()) == 10 and not second["has_more"]
    assert {"validating", "in_progress", "completed", "failed", "cancelled"} <= set(statuses)
    first = _call("GET", f"{sandbox_url}/batches", FIRST, params={"limit": 100}).json()
    assert len(first["data"]) == 36  # the first organisation's seed, unchanged
    first_descriptions = {batch["metadata"]["description"] for batch in first["data"]}
    second_descriptions = {batch["metadata"]["description"] for batch in second["data"]}
    assert len(second_descriptions) == 10 and not first_descriptions & second_descriptions
    for batch in second["data"]:
        if batch["status"] != "failed":
            assert _call("GET", f"{sandbox_url}/files/{batch['input_file_id']}/content", SECOND).status_code == 200
            _error(_call("GET", f"{sandbox_url}/files/{batch['input_file_id']}/content", FIRST), 404)
    assert sorted(SeedMarker.objects.values_list("name", flat=True)) == ["demo", "demo-second"]


# --- The Azure-flavoured path -----------------------------------------------------


def test_it_serves_the_same_api_at_the_azure_path_with_an_api_key_header(azure_url, sandbox_url, sandbox_clock):
    uploaded = _upload(azure_url, AZURE_SECOND)
    created = _create(azure_url, AZURE_SECOND, uploaded["id"])
    assert created.status_code == 200 and spec_errors("Batch", created.json()) == []
    batch = created.json()
    done = _finished(azure_url, AZURE_SECOND, batch["id"], sandbox_clock)
    assert done["status"] == "completed"
    content = _call("GET", f"{azure_url}/files/{done['output_file_id']}/content", AZURE_SECOND)
    assert content.status_code == 200 and len(content.text.splitlines()) == 2
    assert _listed_ids(azure_url, AZURE_SECOND, "batches", **{"api-version": "preview"}) == [batch["id"]]

    # One organisation, whichever path and header: the same batch under the OpenAI path with its bearer key...
    assert _call("GET", f"{sandbox_url}/batches/{batch['id']}", SECOND).json() == done
    # ...and none of it for the other organisation's key, on either path.
    assert _listed_ids(azure_url, AZURE_FIRST, "batches") == []
    _error(_call("GET", f"{azure_url}/batches/{batch['id']}", AZURE_FIRST), 404)
    assert _call("GET", f"{azure_url}/batches/{batch['id']}", SECOND).json() == done  # Entra-style bearer accepted
    _error(_call("POST", f"{azure_url}/batches/{batch['id']}/cancel", AZURE_SECOND), 409)
    unknown = _error(_call("GET", f"{azure_url}/models", AZURE_SECOND), 404)
    assert unknown["message"] == "Invalid URL (GET /openai/v1/models)"


@pytest.mark.once
@pytest.mark.parametrize(
    ("path", "headers", "message", "code"),
    [
        ("/sandbox/v1", {}, "You didn't provide an API key.", None),
        ("/sandbox/v1", {"api-key": "sk-sandbox"}, "You didn't provide an API key.", None),  # OpenAI wants a bearer
        (
            "/sandbox/v1",
            {"Authorization": "Bearer sk-sandbox-third-9xyz"},
            "Incorrect API key provided: ",
            "invalid_api_key",
        ),
        ("/sandbox/openai/v1", {}, "Access denied due to missing subscription key.", "401"),
        (
            "/sandbox/openai/v1",
            {"api-key": "sk-sandbox-third-9xyz"},
            "Access denied due to invalid subscription key",
            "401",
        ),
        (
            "/sandbox/openai/v1",
            {"Authorization": "Bearer sk-sandbox-third-9xyz"},
            "Access denied due to invalid subscription key",
            "401",
        ),
    ],
)
def test_it_refuses_a_missing_or_wrong_key_on_each_path(live_server, path, headers, message, code):
    for endpoint in ("/batches", "/files", "/batches/batch_x", "/nowhere"):
        error = _error(_call("GET", f"{live_server.url}{path}{endpoint}", headers), 401)
        assert error["message"].startswith(message) and error["code"] == code
        assert "sandbox-third" not in error["message"]
    assert not SandboxBatch.objects.exists()


@pytest.mark.once
def test_it_takes_the_api_key_header_before_a_bearer_token_on_the_azure_path(azure_url):
    both = {"api-key": "sk-sandbox-second", "Authorization": "Bearer sk-sandbox"}
    batch = _batch(azure_url, both)
    assert SandboxBatch.objects.get(pk=batch["id"]).organisation == "org-sandbox-second"
    _error(_call("GET", f"{azure_url}/batches", {"api-key": "wrong-key", "Authorization": "Bearer sk-sandbox"}), 401)


# --- Gateway-style ids -------------------------------------------------------------


def _decoded(value):
    assert GATEWAY_ID.fullmatch(value) and "/" not in value, value
    return base64.urlsafe_b64decode(value).decode()


def test_it_round_trips_gateway_style_ids(sandbox_url, settings, sandbox_clock):
    settings.SANDBOX_ID_STYLE = "gateway"
    uploaded = _upload(sandbox_url, FIRST, count=3)
    assert 150 <= len(uploaded["id"]) <= 250 and uploaded["id"].endswith("=")
    assert _decoded(uploaded["id"]).startswith("litellm_proxy:application/octet-stream;unified_id,")
    assert re.search(r";llm_file_id,file-[A-Za-z0-9]{22}$", _decoded(uploaded["id"]))
    assert _call("GET", f"{sandbox_url}/files/{uploaded['id']}", FIRST).json() == uploaded

    batches = [_create(sandbox_url, FIRST, uploaded["id"]).json() for _ in range(3)]
    for batch in batches:
        assert 150 <= len(batch["id"]) <= 250 and batch["id"].endswith("=")
        decoded = _decoded(batch["id"])
        assert re.fullmatch(r"litellm_proxy;model_id:[0-9a-f]{64};llm_batch_id:batch_[0-9a-f]{32}", decoded)
        assert batch["input_file_id"] == uploaded["id"]
        retrieved = _call("GET", f"{sandbox_url}/batches/{batch['id']}", FIRST)
        assert retrieved.status_code == 200 and retrieved.json()["id"] == batch["id"]

    # Pages follow the encoded ids as cursors.
    first_page = _call("GET", f"{sandbox_url}/batches", FIRST, params={"limit": 2}).json()
    assert first_page["has_more"] and len(first_page["data"]) == 2
    rest = _listed_ids(sandbox_url, FIRST, "batches", after=first_page["last_id"])
    assert sorted([*[b["id"] for b in first_page["data"]], *rest]) == sorted(b["id"] for b in batches)

    cancelled = _call("POST", f"{sandbox_url}/batches/{batches[0]['id']}/cancel", FIRST)
    assert cancelled.status_code == 200 and cancelled.json()["id"] == batches[0]["id"]
    done = _finished(sandbox_url, FIRST, batches[0]["id"], sandbox_clock)
    finished = _finished(sandbox_url, FIRST, batches[1]["id"], sandbox_clock)
    assert (done["status"], finished["status"]) == ("cancelled", "completed")
    for file_id in (finished["output_file_id"], *filter(None, [done["output_file_id"], done["error_file_id"]])):
        assert _decoded(file_id).startswith("litellm_proxy:")
        content = _call("GET", f"{sandbox_url}/files/{file_id}/content", FIRST)
        assert content.status_code == 200
        assert {json.loads(line)["custom_id"] for line in content.text.splitlines()} <= {"r0", "r1", "r2"}
    assert len(_call("GET", f"{sandbox_url}/files/{finished['output_file_id']}/content", FIRST).text.splitlines()) == 3
    assert set(_listed_ids(sandbox_url, FIRST, "files")) >= {uploaded["id"], finished["output_file_id"]}
    _error(_call("GET", f"{sandbox_url}/batches/{batches[2]['id']}", SECOND), 404)


def test_it_gives_each_organisation_its_own_id_style(sandbox_url, settings):
    settings.SANDBOX_SECOND_ID_STYLE = "gateway"
    plain = _batch(sandbox_url, FIRST)
    encoded = _batch(sandbox_url, SECOND)
    assert re.fullmatch(r"batch_[0-9a-f]{32}", plain["id"])
    assert re.fullmatch(r"file-[A-Za-z0-9]{22}", plain["input_file_id"])
    assert _decoded(encoded["id"]).startswith("litellm_proxy;")
    assert _decoded(encoded["input_file_id"]).startswith("litellm_proxy:")


# --- Existing rows -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_rows_to_the_first_organisation():
    before = [("sandbox", "0003_webhooks")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    OldFile, OldBatch = old_apps.get_model("sandbox", "SandboxFile"), old_apps.get_model("sandbox", "SandboxBatch")
    OldFile.objects.create(id="file-old", filename="old.jsonl", purpose="batch", bytes=10, created_at=1)
    OldBatch.objects.create(
        id="batch_old", endpoint="/v1/chat/completions", input_file_id="file-old", created=1.0, created_at=1,
        speed=1.0, validate_s=1.0, run_s=1.0, finalize_s=1.0, drain_s=1.0,
    )  # fmt: skip

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert SandboxFile.objects.get(pk="file-old").organisation == "org-sandbox"
    assert SandboxBatch.objects.get(pk="batch_old").organisation == "org-sandbox"


@pytest.mark.once
def test_the_id_style_setting_takes_openai_or_gateway_and_refuses_anything_else(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from dashboard.settings import SANDBOX_ID_STYLES, _env_choice

    monkeypatch.setenv("SANDBOX_ID_STYLE", " Gateway ")
    assert _env_choice("SANDBOX_ID_STYLE", "openai", SANDBOX_ID_STYLES) == "gateway"
    monkeypatch.setenv("SANDBOX_ID_STYLE", "")
    assert _env_choice("SANDBOX_ID_STYLE", "openai", SANDBOX_ID_STYLES) == "openai"
    monkeypatch.setenv("SANDBOX_ID_STYLE", "litellm")
    with pytest.raises(ImproperlyConfigured, match="SANDBOX_ID_STYLE must be one of openai, gateway; got 'litellm'"):
        _env_choice("SANDBOX_ID_STYLE", "openai", SANDBOX_ID_STYLES)
