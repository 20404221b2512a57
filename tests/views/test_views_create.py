"""Creating a batch: permission, CSRF, validation before any upstream call, the sandbox end to end, upstream errors
shown on the form, and one batch per form however often (or however concurrently) it is submitted."""

import json
import re
import threading
import uuid

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client

from batches import actions, services
from batches.models import Batch, BatchCreation
from tests.fake_api import Reply, example

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"
URL = "/batches/new/"


def _line(number: int, model: str = "gpt-4o-mini") -> dict:
    return {
        "custom_id": f"request-{number}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": f"Say {number}."}]},
    }


def _content(count: int = 3) -> bytes:
    return "".join(json.dumps(_line(n)) + "\n" for n in range(1, count + 1)).encode()


def _fields(token=None, **overrides) -> dict:
    fields = {
        "token": str(token or uuid.uuid4()),
        "endpoint": "",
        "completion_window": "24h",
        "output_expiry_unit": "days",
        "input_file_id": "",
    }
    fields.update(overrides)
    return fields


def _post(client, content: bytes | None = None, **fields):
    data = _fields(**fields)
    if content is not None:
        data["input_file"] = SimpleUploadedFile("requests.jsonl", content, content_type="application/jsonl")
    return client.post(URL, data)


def _batch_reply(batch_id: str = "batch_new1", input_file_id: str = "file-up1", **changes) -> Reply:
    body = {**example("batch.validating.json"), "id": batch_id, "input_file_id": input_file_id, **changes}
    return Reply(200, body)


def _file_reply(file_id: str = "file-up1", purpose: str = "batch", **kwargs) -> Reply:
    return Reply(200, {**example("file.batch_input.json"), "id": file_id, "purpose": purpose}, **kwargs)


def _sandbox_get(sandbox_url: str, path: str) -> dict:
    response = requests.get(f"{sandbox_url}{path}", headers={"Authorization": "Bearer sk-sandbox"}, timeout=10)
    response.raise_for_status()
    return response.json()


# --- Access -----------------------------------------------------------------


def test_it_shows_the_form_with_a_token_and_sixteen_metadata_rows(operator_client):
    response = operator_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert 'name="token"' in html
    assert html.count('name="metadata_key_') == services.METADATA_MAX_PAIRS
    assert '<details class="more-metadata">' in html  # rows 5-16 start folded
    assert ">Infer from the file</option>" in html


def test_it_gives_every_form_its_own_token(operator_client):
    first = operator_client.get(URL).context["form"]["token"].value()
    second = operator_client.get(URL).context["form"]["token"].value()
    assert first != second


def test_it_forbids_users_without_the_create_permission(viewer_client, fake_api):
    response = viewer_client.get(URL)
    assert response.status_code == 403
    assert f'href="{URL}"' not in response.content.decode()  # no "New batch" link either
    assert _post(viewer_client, _content()).status_code == 403
    assert fake_api.received == []


def test_it_sends_anonymous_visitors_to_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={URL}"


def test_it_refuses_a_post_without_a_csrf_token(operator, fake_api):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = _post(client, _content())
    assert response.status_code == 403
    assert fake_api.received == []
    assert not BatchCreation.objects.exists()


# --- Validation before anything is sent --------------------------------------


def test_it_shows_line_errors_and_sends_nothing_for_an_invalid_file(operator_client, fake_api):
    content = _content(2) + json.dumps({**_line(3), "method": "GET"}).encode() + b"\n" + json.dumps(_line(1)).encode()
    response = _post(operator_client, content)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Line 3: method must be" in html
    assert "Line 4: custom_id &#x27;request-1&#x27; is already used on line 1." in html
    assert "Nothing was created" in html
    assert fake_api.received == []
    assert not BatchCreation.objects.exists()


def test_it_caps_the_shown_errors_at_twenty(operator_client, fake_api):
    content = "".join(json.dumps({**_line(n), "method": "GET"}) + "\n" for n in range(1, 26)).encode()
    html = _post(operator_client, content).content.decode()
    assert "Line 20: " in html
    assert "Line 21: " not in html
    assert "…and 5 more problems." in html
    assert fake_api.received == []


def test_it_leaves_the_sandbox_empty_when_the_file_is_invalid(operator_client, sandbox_url):
    response = _post(operator_client, b"\xef\xbb\xbf" + _content(2))
    assert response.status_code == 200
    assert "byte order mark" in response.content.decode()
    assert _sandbox_get(sandbox_url, "/batches")["data"] == []
    assert _sandbox_get(sandbox_url, "/files")["data"] == []


# --- The sandbox end to end --------------------------------------------------


def test_it_uploads_creates_and_redirects_to_the_new_batch(operator_client, sandbox_url):
    content = _content(3)
    response = _post(
        operator_client,
        content,
        metadata_key_1="project",
        metadata_value_1="nightly <eval>",
        output_expiry_amount="2",
        output_expiry_unit="days",
    )
    assert response.status_code == 303
    batch_id = response["Location"].removeprefix("/batches/").strip("/")

    batches = _sandbox_get(sandbox_url, "/batches")["data"]
    assert [b["id"] for b in batches] == [batch_id]
    created = batches[0]
    assert created["endpoint"] == CHAT
    assert created["metadata"] == {"project": "nightly <eval>"}
    assert b"".join(services.get_client().file_content(created["input_file_id"])) == content
    assert Batch.objects.filter(batch_id=batch_id).exists()  # recorded, so the page renders at once

    page = operator_client.get(response["Location"])
    assert page.status_code == 200
    html = page.content.decode()
    assert f"Batch {batch_id} created." in html
    assert f"<title>{batch_id} · " in html
    assert "nightly &lt;eval&gt;" in html


def test_it_creates_a_batch_from_an_uploaded_file_id(operator_client, sandbox_url, tmp_path):
    path = tmp_path / "input.jsonl"
    path.write_bytes(_content(2))
    uploaded = services.get_client().upload_file(path)

    response = _post(operator_client, input_file_id=uploaded.id, endpoint=CHAT)
    assert response.status_code == 303
    batches = _sandbox_get(sandbox_url, "/batches")["data"]
    assert [b["input_file_id"] for b in batches] == [uploaded.id]
    assert len(_sandbox_get(sandbox_url, "/files")["data"]) == 1  # nothing uploaded again


def test_it_says_when_a_file_id_does_not_exist(operator_client, sandbox_url):
    response = _post(operator_client, input_file_id="file-doesnotexist", endpoint=CHAT)
    assert response.status_code == 200
    assert "There is no file file-doesnotexist" in response.content.decode()
    assert _sandbox_get(sandbox_url, "/batches")["data"] == []


def test_it_creates_one_batch_when_the_same_form_is_submitted_twice(operator_client, sandbox_url):
    token = uuid.uuid4()
    first = _post(operator_client, _content(), token=token)
    second = _post(operator_client, _content(), token=token)
    assert first.status_code == second.status_code == 303
    assert first["Location"] == second["Location"]
    assert len(_sandbox_get(sandbox_url, "/batches")["data"]) == 1
    assert len(_sandbox_get(sandbox_url, "/files")["data"]) == 1
    page = operator_client.get(second["Location"])
    assert "This form was already submitted" in page.content.decode()


# --- One batch for concurrent submissions ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_creates_one_batch_when_two_submissions_race(operator, fake_api):
    # The upload is slow, so the second request arrives while the first one holds the token.
    fake_api.script("POST", "/files", _file_reply(delay=0.5))
    fake_api.script("POST", "/batches", _batch_reply())
    token = uuid.uuid4()
    start = threading.Barrier(2)
    responses = []

    def submit():
        try:
            client = Client()
            client.force_login(operator)
            start.wait()
            responses.append(_post(client, _content(), token=token))
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert [r.status_code for r in responses] == [303, 303]
    assert {r["Location"] for r in responses} == {"/batches/batch_new1/"}
    assert len(fake_api.requests_to("POST", "/files")) == 1
    assert len(fake_api.requests_to("POST", "/batches")) == 1


# --- Upstream errors on the form ---------------------------------------------


def test_it_shows_a_refused_create_and_offers_the_uploaded_file(operator_client, fake_api):
    fake_api.script("POST", "/files", _file_reply("file-kept"))
    fake_api.script("POST", "/batches", Reply.example("error.400.metadata_too_many_keys.json", 400))
    response = _post(operator_client, _content(), metadata_key_1="team", metadata_value_1="ml")
    assert response.status_code == 200
    html = response.content.decode()
    assert "The file was uploaded as file-kept, but no batch was made from it." in html
    assert "Invalid &#x27;metadata&#x27;: too many properties." in html
    form = response.context["form"]
    assert form["input_file_id"].value() == "file-kept"
    assert form["endpoint"].value() == CHAT
    assert form["metadata_key_1"].value() == "team"
    assert not BatchCreation.objects.exists()  # the token is free for another try

    # Submitting the prefilled form creates the batch from the uploaded file, without uploading again.
    fake_api.script("GET", "/files/file-kept", _file_reply("file-kept"))
    fake_api.script("POST", "/batches", _batch_reply(input_file_id="file-kept"))
    retry = _post(operator_client, input_file_id="file-kept", endpoint=CHAT, token=form["token"].value())
    assert retry.status_code == 303
    assert len(fake_api.requests_to("POST", "/files")) == 1
    assert fake_api.requests_to("POST", "/batches")[-1].json()["input_file_id"] == "file-kept"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply.example("error.401.invalid_api_key.json", 401), "rejected the configured API key"),
        (Reply.example("error.429.rate_limit.json", 429), "rate limiting requests"),
        (Reply.example("error.429.insufficient_quota.json", 429), "out of quota"),
        (Reply(503, {"error": {"message": "overloaded", "type": "server_error"}}), "Cannot reach the OpenAI API"),
    ],
)
def test_it_shows_a_failed_upload_in_plain_words(operator_client, fake_api, reply, message):
    fake_api.script("POST", "/files", reply)
    response = _post(operator_client, _content())
    assert response.status_code == 200
    html = response.content.decode()
    assert "Uploading the file failed." in html
    assert message in html
    assert "Nothing was created." in html
    assert "sk-sandbox" not in html
    assert fake_api.requests_to("POST", "/batches") == []


def test_it_says_when_the_api_cannot_be_reached(operator_client, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0
    response = _post(operator_client, _content())
    assert response.status_code == 200
    assert "Cannot reach the OpenAI API" in response.content.decode()
    assert not Batch.objects.exists()


def test_it_refuses_a_file_id_with_another_purpose(operator_client, fake_api):
    fake_api.script("GET", "/files/file-other", _file_reply("file-other", purpose="assistants"))
    response = _post(operator_client, input_file_id="file-other", endpoint=CHAT)
    assert "was uploaded with purpose “assistants”" in response.content.decode()
    assert fake_api.requests_to("POST", "/batches") == []


def test_it_retries_a_failed_submission_of_the_same_form(operator_client, fake_api):
    fake_api.script("POST", "/files", _file_reply())
    # The API says not to retry, so the first submission fails (a person's create otherwise retries a 429).
    refused = Reply.example("error.429.rate_limit.json", 429, headers={"x-should-retry": "false"})
    fake_api.script("POST", "/batches", refused, _batch_reply())
    token = uuid.uuid4()
    assert _post(operator_client, _content(), token=token).status_code == 200
    assert _post(operator_client, _content(), token=token).status_code == 303
    assert len(fake_api.requests_to("POST", "/batches")) == 2


def test_it_sends_the_chosen_options_upstream(operator_client, fake_api):
    fake_api.script("POST", "/files", _file_reply())
    fake_api.script("POST", "/batches", _batch_reply())
    response = _post(
        operator_client,
        _content(),
        endpoint=CHAT,
        metadata_key_1="a",
        metadata_value_1="1",
        metadata_key_3="b",
        metadata_value_3="",
        output_expiry_amount="12",
        output_expiry_unit="hours",
    )
    assert response.status_code == 303
    upload = fake_api.requests_to("POST", "/files")[0]
    assert b'filename="requests.jsonl"' in upload.body
    assert b"batch" in upload.body
    assert fake_api.requests_to("POST", "/batches")[0].json() == {
        "input_file_id": "file-up1",
        "endpoint": CHAT,
        "completion_window": "24h",
        "metadata": {"a": "1", "b": ""},
        "output_expires_after": {"anchor": "created_at", "seconds": 43_200},
    }


def test_it_waits_no_longer_than_the_first_submission_when_it_is_stuck(operator, operator_client, monkeypatch):
    monkeypatch.setattr(actions, "CREATE_WAIT_SECONDS", 0.3)
    token = uuid.uuid4()
    BatchCreation.objects.create(token=token, created_by=operator.username)  # a submission still uploading
    response = _post(operator_client, _content(), token=token)
    assert response.status_code == 200
    assert "This form is still being submitted" in response.content.decode()


# --- Description, Check file, the model while validating ----------------------


def test_it_stores_the_description_as_the_description_metadata_key(operator_client, sandbox_url):
    response = _post(
        operator_client, _content(2), description="Nightly eval", metadata_key_1="team", metadata_value_1="ml"
    )
    assert response.status_code == 303

    created = _sandbox_get(sandbox_url, "/batches")["data"][0]
    assert created["metadata"] == {"description": "Nightly eval", "team": "ml"}
    assert "Nightly eval" in operator_client.get("/batches/").content.decode()  # the list shows it


def test_it_refuses_a_second_description_in_the_metadata_rows(operator_client, sandbox_url):
    response = _post(operator_client, _content(2), description="A", metadata_key_1="description", metadata_value_1="B")
    assert response.status_code == 200
    assert "The description is set in the Description field above." in response.content.decode()
    assert _sandbox_get(sandbox_url, "/batches")["data"] == []


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain-form"])
def test_it_checks_a_file_without_creating_anything(operator_client, sandbox_url, htmx):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    data = _fields(check="1")
    data["input_file"] = SimpleUploadedFile("requests.jsonl", _content(3), content_type="application/jsonl")
    response = operator_client.post(URL, data, **headers)

    assert response.status_code == 200
    html = response.content.decode()
    assert "The file is valid" in html
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>(?:<code>)?([^<]+)", html))
    assert facts == {
        "Requests": "3",
        "Model": "gpt-4o-mini",
        "Endpoint": CHAT,
        "First custom_id": "request-1",
        "Size": facts["Size"],
    }
    assert html.lstrip().startswith('<div id="file-check"') == htmx  # htmx: only the result, the file stays chosen
    assert _sandbox_get(sandbox_url, "/batches")["data"] == []
    assert _sandbox_get(sandbox_url, "/files")["data"] == []


def test_it_shows_what_a_check_found_wrong(operator_client, sandbox_url):
    data = _fields(check="1")
    data["input_file"] = SimpleUploadedFile("requests.jsonl", b"", content_type="application/jsonl")
    html = operator_client.post(URL, data, HTTP_HX_REQUEST="true").content.decode()
    assert "Nothing was sent." in html and "The file is empty: it has no requests." in html


def test_it_puts_the_specific_error_above_the_generic_banner(operator_client, sandbox_url):
    html = _post(operator_client, b"").content.decode()
    banner = html.split('id="form-errors"', 1)[1]
    assert banner.index("The file is empty") < banner.index("Nothing was created.")


def test_it_shows_the_model_read_from_the_file_while_the_batch_validates(operator_client, sandbox_url, settings):
    settings.SANDBOX_SPEED = 0.001  # stays validating
    response = _post(operator_client, _content(2))
    html = operator_client.get(response["Location"]).content.decode()

    assert "gpt-4o-mini" in html and "model not known yet" not in html
    assert 'data-live-state="validating"' in html


def test_it_offers_back_not_cancel_on_the_form(operator_client):
    html = operator_client.get(URL).content.decode()
    assert '<a href="/batches/">Back</a>' in html
    assert ">Cancel<" not in html
