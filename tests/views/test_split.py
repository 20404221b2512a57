"""A file over the API's limits is sent as the parts of one job: split on line boundaries byte for byte, shown before
anything is sent, sent once per form, resumed after a part fails, read back from metadata whoever made it, merged in
input order across parts and their retries, and cancelled as one."""

import csv
import io
import json
import uuid

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import F
from django.urls import reverse

from audit.models import AuditEvent
from batches import services
from batches.models import Batch, Connection, record_batch, record_batches
from retries import merged
from sandbox.models import SandboxBatch
from tests.batch_api import payload
from tests.fake_api import Reply, example

URL = "/batches/new/"
CHAT = "/v1/chat/completions"
DAY = 86_400
LINES = 120_000


def _line(number: int) -> bytes:
    # Small lines, spelled two ways and with UTF-8 text, so only a byte copy keeps them.
    if number % 2:
        text = f'{{"custom_id":"r{number:06d}","method":"POST","url":"{CHAT}","body":{{"model":"gpt-4o-mini",'
        return (text + f'"messages":[{{"role":"user","content":"Grüße {number}"}}]}}}}').encode()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"h\u00e9 {number}"}]}
    return json.dumps({"method": "POST", "url": CHAT, "custom_id": f"r{number:06d}", "body": body}).encode()


def _content(count: int) -> bytes:
    """`count` lines, the last without its line break."""
    return b"\n".join(_line(n) for n in range(1, count + 1))


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """120,000 lines (about 11 MB) written once for the module."""
    path = tmp_path_factory.mktemp("split") / "big.jsonl"
    path.write_bytes(_content(LINES))
    return path


def _fields(token=None, **overrides) -> dict:
    fields = {"token": str(token or uuid.uuid4()), "completion_window": "24h", "output_expiry_unit": "days"}
    return {**fields, **overrides}


def _post(client, content: bytes, name: str = "requests.jsonl", **fields):
    upload = SimpleUploadedFile(name, content, content_type="application/jsonl")
    return client.post(URL, {**_fields(**fields), "input_file": upload})


def _sandbox(sandbox_url: str, path: str):
    headers = {"Authorization": "Bearer sk-sandbox"}
    return requests.get(f"{sandbox_url}{path}", headers=headers, timeout=30)


def _part_number(batch: dict) -> int:
    """In part order (parts made in the same second have no other order)."""
    return int(batch["metadata"].get("batchboard_part", 0))


def _sandbox_batches(sandbox_url):
    return sorted(_sandbox(sandbox_url, "/batches?limit=100").json()["data"], key=_part_number)


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of at most 2 requests, so a 5-line file is 3 parts."""
    monkeypatch.setattr(services, "MAX_REQUESTS_PER_BATCH", 2)


def _finish(batch_id: str, tasks) -> Batch:
    """The batch finishes upstream and the sync loop records it (its client waits OPENAI_TIMEOUT while the sandbox
    writes 50,000 results); a task worker keeps its results."""
    SandboxBatch.objects.filter(pk=batch_id).update(created=F("created") - 10 * DAY)
    batch = record_batch(services.get_client().retrieve_batch(batch_id))
    assert batch.is_terminal
    tasks.drain()
    return Batch.objects.get(pk=batch.pk)


@pytest.mark.django_db(transaction=True)
def test_it_splits_a_120000_line_file_into_three_batches_of_one_job_merged_in_input_order(
    operator_client, sandbox_url, big_file, tasks, settings
):
    settings.OPENAI_TIMEOUT = 300.0  # a busy machine's sandbox may take a while to write 50,000 results
    content = big_file.read_bytes()
    response = _post(operator_client, content, metadata_key_1="project", metadata_value_1="nightly")
    assert response.status_code == 303

    created = _sandbox_batches(sandbox_url)
    assert len(created) == 3
    first = created[0]["id"]
    assert [b["metadata"] for b in created] == [
        {"project": "nightly", "batchboard_part": "1", "batchboard_parts": "3"},
        {"project": "nightly", "batchboard_part": "2", "batchboard_parts": "3", "batchboard_job": first},
        {"project": "nightly", "batchboard_part": "3", "batchboard_parts": "3", "batchboard_job": first},
    ]
    stored = [_sandbox(sandbox_url, f"/files/{b['input_file_id']}/content").content for b in created]
    assert b"".join(stored) == content  # every byte, in order, the last line's missing newline kept
    assert [part.count(b"\n") for part in stored] == [50_000, 50_000, 19_999]
    assert response["Location"].startswith(reverse("retries:final", args=[first]))  # the job's page

    parts = Batch.objects.parts_of(first, Connection.objects.default().pk)
    assert [(p.part, p.parts, p.part_of) for p in parts] == [(1, 3, first), (2, 3, first), (3, 3, first)]
    detail = operator_client.get(reverse("batches:detail", args=[parts[1].batch_id])).content.decode()
    assert "Part 2 of 3" in detail and reverse("retries:final", args=[first]) in detail

    for part in parts:
        _finish(part.batch_id, tasks)
    job = merged.load_job(first, parts[0].connection_id)
    assert job.is_split and job.root_archive is not None
    counts = merged.counts(job)
    assert counts.total == LINES
    failing_before = counts.failing_total
    assert failing_before  # the sandbox fails some lines

    # Retry the failed lines of part 2: the retry stays in part 2's lineage and its answers join the job.
    retry_page = reverse("retries:confirm", args=[parts[1].batch_id])
    answer = operator_client.post(retry_page, {"token": str(uuid.uuid4()), "select": "filter", "status": "500"})
    assert answer.status_code == 303
    retry = Batch.objects.exclude(pk__in=[p.pk for p in parts]).get()
    assert (retry.retry_of, retry.job, retry.part_of) == (parts[1].batch_id, parts[1].batch_id, "")
    _finish(retry.batch_id, tasks)

    job = merged.load_job(first, parts[0].connection_id)
    assert retry in job.batches
    assert merged.counts(job).failing_total < failing_before

    page = operator_client.get(reverse("retries:final", args=[first]))
    assert page.status_code == 200
    assert "Job of 3 parts" in page.content.decode()
    export = operator_client.get(reverse("retries:final_csv", args=[first]))
    table = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))[1:]
    assert [row[1] for row in table] == [f"r{n:06d}" for n in range(1, LINES + 1)]  # the file's order, part after part
    assert [row[0] for row in table] == [str(n) for n in range(1, LINES + 1)]  # line numbers in the whole file
    answered_by = {row[8] for row in table[50_000:100_000]}
    assert retry.batch_id in answered_by and answered_by <= {parts[1].batch_id, retry.batch_id}


@pytest.mark.django_db
@pytest.mark.usefixtures("small_parts")
def test_the_check_shows_how_the_file_will_be_split_before_anything_is_sent(operator_client, fake_api):
    content = _content(5)
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        upload = SimpleUploadedFile("requests.jsonl", content)
        response = operator_client.post(URL, {**_fields(), "input_file": upload, "check": "1"}, **headers)
        assert response.status_code == 200
        assert "sent as 3 batches of 2, 2 and 1 requests" in response.content.decode()
    assert fake_api.received == []


@pytest.mark.django_db
@pytest.mark.usefixtures("small_parts")
def test_it_says_when_the_users_metadata_and_the_jobs_keys_do_not_fit(operator_client, fake_api):
    pairs = {}
    for number in range(1, 15):
        pairs[f"metadata_key_{number}"], pairs[f"metadata_value_{number}"] = f"k{number}", "v"
    response = _post(operator_client, _content(5), **pairs)
    page = response.content.decode()
    assert response.status_code == 200
    assert "at most 13 of yours fit" in page and "you gave 14" in page
    assert fake_api.received == []


@pytest.mark.django_db
def test_it_refuses_a_file_over_the_upload_setting_with_a_clear_message(operator_client, fake_api, settings):
    settings.BATCHBOARD_MAX_UPLOAD_BYTES = 1024 * 1024
    response = _post(operator_client, b"x" * (1024 * 1024 + 1))
    assert "BATCHBOARD_MAX_UPLOAD_BYTES" in response.content.decode()
    assert fake_api.received == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("small_parts")
def test_the_same_form_submitted_twice_sends_one_job(operator_client, sandbox_url):
    token = uuid.uuid4()
    first = _post(operator_client, _content(5), name="twice.jsonl", token=token)
    second = _post(operator_client, _content(5), name="twice.jsonl", token=token)
    assert first.status_code == second.status_code == 303
    assert first["Location"] == second["Location"]
    assert len(_sandbox_batches(sandbox_url)) == 3
    # This form's files by their names: the live server is the whole session's, and another test's thread may still
    # be uploading to it.
    uploaded = [file["filename"] for file in _sandbox(sandbox_url, "/files").json()["data"]]
    assert sorted(name for name in uploaded if name.startswith("twice.")) == [
        f"twice.part{number}of3.jsonl" for number in (1, 2, 3)
    ]
    outcomes = sorted(AuditEvent.objects.filter(action="create").values_list("outcome", flat=True))
    assert outcomes == ["already"] * 3 + ["ok"] * 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("small_parts")
def test_an_install_that_imports_the_batches_from_the_api_sees_the_same_job(operator_client, sandbox_url):
    assert _post(operator_client, _content(5)).status_code == 303
    connection = Connection.objects.default()
    made_here = [
        (b.batch_id, b.part, b.parts)
        for b in Batch.objects.parts_of(_sandbox_batches(sandbox_url)[0]["id"], connection.pk)
    ]
    Batch.objects.all().delete()  # another install: it knows only what the API lists

    page = services.get_client(connection=connection).list_batches(limit=100)
    record_batches(page.data, connection=connection)  # the bulk insert of the sync loop's walk

    first = _sandbox_batches(sandbox_url)[0]["id"]
    assert [(b.batch_id, b.part, b.parts) for b in Batch.objects.parts_of(first, connection.pk)] == made_here
    assert len(made_here) == 3


def _reply(batch_id, metadata, file_id="file-up1"):
    body = {**example("batch.validating.json"), "id": batch_id, "input_file_id": file_id, "metadata": metadata}
    return Reply(200, body)


@pytest.mark.django_db
@pytest.mark.usefixtures("small_parts")
def test_a_part_that_fails_to_send_is_named_and_the_same_form_sends_only_the_rest(operator_client, fake_api):
    file_reply = Reply(200, {**example("file.batch_input.json"), "id": "file-up1", "purpose": "batch"})
    fake_api.script("POST", "/files", file_reply)
    part1 = {"batchboard_part": "1", "batchboard_parts": "3"}
    fake_api.script("POST", "/batches", _reply("batch_p1", part1), Reply(500, {"error": {"message": "down"}}))
    token = uuid.uuid4()

    failed = _post(operator_client, _content(5), token=token)
    page = failed.content.decode()
    assert failed.status_code == 502
    assert "Part 2 of 3 was not sent" in page
    assert reverse("batches:detail", args=["batch_p1"]) in page
    assert "the parts sent already are not sent again" in page
    assert len(fake_api.requests_to("POST", "/batches")) == 2

    later = {"batchboard_job": "batch_p1", "batchboard_parts": "3"}
    fake_api.script(
        "POST",
        "/batches",
        _reply("batch_p2", {**later, "batchboard_part": "2"}),
        _reply("batch_p3", {**later, "batchboard_part": "3"}),
    )
    resumed = _post(operator_client, _content(5), token=token)
    assert resumed.status_code == 303
    sent = [json.loads(r.body)["metadata"] for r in fake_api.requests_to("POST", "/batches")]
    assert [m["batchboard_part"] for m in sent] == ["1", "2", "2", "3"]  # part 1 never twice
    assert all(m.get("batchboard_job", "batch_p1") == "batch_p1" for m in sent)
    parts = Batch.objects.parts_of("batch_p1", Connection.objects.default().pk)
    assert [p.batch_id for p in parts] == ["batch_p1", "batch_p2", "batch_p3"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "metadata",
    [
        {"batchboard_part": "2", "batchboard_parts": "1000000000", "batchboard_job": "batch_first"},
        {"batchboard_part": "0", "batchboard_parts": "3", "batchboard_job": "batch_first"},
        {"batchboard_part": "-1", "batchboard_parts": "3"},
        {"batchboard_part": "4", "batchboard_parts": "3", "batchboard_job": "batch_first"},
        {"batchboard_part": "²", "batchboard_parts": "3", "batchboard_job": "batch_first"},
        {"batchboard_part": "2", "batchboard_parts": "3", "batchboard_job": "not an id; DROP TABLE"},
        {"batchboard_part": "2", "batchboard_parts": "3"},
        {"batchboard_part": "1", "batchboard_parts": "3", "batchboard_job": "batch_other"},
        {"batchboard_part": "2", "batchboard_parts": "3", "batchboard_job": "batch_first", "batchboard_retry_of": "x"},
    ],
)
def test_hostile_part_metadata_is_recorded_as_no_part(metadata):
    batch = record_batch(services.ApiBatch.from_api(payload("in_progress", metadata=metadata)))
    assert (batch.part_of, batch.part, batch.parts) == ("", 0, 0)


@pytest.mark.django_db
def test_a_job_is_its_first_part_and_the_first_claim_of_each_number_whoever_wrote_it():
    def recorded(metadata, created_at, batch_id=None):
        fields = {"metadata": metadata, "created_at": created_at, **({"id": batch_id} if batch_id else {})}
        return record_batch(services.ApiBatch.from_api(payload("in_progress", **fields)))

    first = recorded({"batchboard_part": "1", "batchboard_parts": "3"}, 1_000)
    later = {"batchboard_job": first.batch_id, "batchboard_parts": "3"}
    second = recorded({**later, "batchboard_part": "2"}, 1_001)
    recorded({**later, "batchboard_part": "2"}, 1_002)  # a second claim of part 2: not in the job
    recorded({"batchboard_job": first.batch_id, "batchboard_parts": "9", "batchboard_part": "3"}, 1_003)  # odd count
    itself = recorded(
        {"batchboard_job": "batch_self", "batchboard_parts": "3", "batchboard_part": "3"}, 1_004, "batch_self"
    )
    assert itself.part_of == ""
    other = Connection.objects.create(slug="other", name="Other")
    assert Batch.objects.parts_of(first.batch_id, other.pk) == []
    assert Batch.objects.parts_of(second.batch_id, first.connection_id) == []
    assert Batch.objects.parts_of(first.batch_id, first.connection_id) == [first, second]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("small_parts")
def test_cancel_job_cancels_every_running_part_each_audited(operator_client, sandbox_url, settings):
    settings.SANDBOX_SPEED = 1.0
    assert _post(operator_client, _content(5)).status_code == 303
    first = _sandbox_batches(sandbox_url)[0]["id"]
    page = operator_client.get(reverse("retries:final", args=[first])).content.decode()
    assert "Cancel job (3 running)" in page

    response = operator_client.post(reverse("retries:cancel_job", args=[first]))
    assert response.status_code == 303
    statuses = {b["status"] for b in _sandbox_batches(sandbox_url)}
    assert statuses <= {"cancelling", "cancelled"}
    cancels = AuditEvent.objects.filter(action="cancel", outcome="ok")
    assert sorted(cancels.values_list("batch_id", flat=True)) == sorted(b["id"] for b in _sandbox_batches(sandbox_url))


@pytest.mark.django_db
def test_a_viewer_may_see_the_job_but_not_cancel_it(viewer_client, fake_api):
    first = record_batch(
        services.ApiBatch.from_api(payload("in_progress", metadata={"batchboard_part": "1", "batchboard_parts": "2"}))
    )
    page = viewer_client.get(reverse("retries:final", args=[first.batch_id])).content.decode()
    assert "Job of 2 parts" in page and "cancel-job" not in page
    assert viewer_client.post(reverse("retries:cancel_job", args=[first.batch_id])).status_code == 403
    assert AuditEvent.objects.filter(action="cancel", outcome="refused").exists()
    assert fake_api.requests_to("POST", f"/batches/{first.batch_id}/cancel") == []


@pytest.mark.django_db
def test_cancel_job_reports_each_part_that_could_not_be_cancelled(api, fake_api, operator_client):
    first = api.add("in_progress", metadata={"batchboard_part": "1", "batchboard_parts": "3"})
    later = {"batchboard_parts": "3", "batchboard_job": first["id"]}
    second = api.add("in_progress", metadata={**later, "batchboard_part": "2"})
    third = api.add("in_progress", metadata={**later, "batchboard_part": "3"})
    overloaded = Reply(503, {"error": {"message": "The server is overloaded.", "type": "server_error"}})
    fake_api.route("POST", f"/batches/{second['id']}/cancel", lambda received: overloaded)

    response = operator_client.post(reverse("retries:cancel_job", args=[third["id"]]), follow=True)

    page = response.content.decode()
    assert "Cancelled 2 of 3." in page and second["id"] in page and "not have gone through" in page
    outcomes = dict(AuditEvent.objects.filter(action="cancel").values_list("batch_id", "outcome"))
    assert outcomes == {first["id"]: "ok", second["id"]: "error", third["id"]: "ok"}
    assert sorted(api.cancels) == sorted([first["id"], third["id"]])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("small_parts")
def test_a_form_reused_with_a_file_of_another_shape_sends_nothing_more(operator_client, sandbox_url):
    token = uuid.uuid4()
    assert _post(operator_client, _content(5), token=token).status_code == 303
    again = _post(operator_client, _content(7), token=token)
    assert again.status_code == 409
    assert "Reload the page to send it as a new job" in again.content.decode()
    assert len(_sandbox_batches(sandbox_url)) == 3
