"""Issue 18, findings 4 and 5: result files the API serves have bounds (a size cap per file, a 10 MB cap per line, a
request page cut at 256 KB per side, everything streamed, peak memory measured in a fresh process), and NUL bytes or
a database error never leave an archive stuck in "archiving"."""

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import IntegrityError

from batches import reactions, services
from batches.forms import MAX_LINE_BYTES
from batches.models import Batch, record_batch
from results import archive
from results.models import ArchiveState, Outcome, ResultArchive, ResultLine
from results.rows import RENDER_BYTES
from tests.batch_api import payload
from tests.conftest import process_environment
from tests.hostile_api import (
    MB,
    hostile_result_files,
    input_record,
    long_answer,
    result_record,
    serve_file,
)

ROOT = Path(__file__).resolve().parents[2]
# The peak resident memory of a process that fetched, indexed and served the files (Django and the apps included).
PEAK_MEMORY_MB = 150


def _jsonl(records) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def _batch(fake_api, *, input_file: bytes | None = None, output: bytes | None = None, error: bytes | None = None):
    """A completed batch whose files the fake API serves (bytes); recorded, with an archive claimed for fetching."""
    ids = {}
    for kind, content in (("input", input_file), ("output", output), ("error", error)):
        if content is not None:
            ids[kind] = f"file-{kind}{random.randrange(10**9)}"
            serve_file(fake_api, ids[kind], content)
    data = payload(
        "completed",
        input_file_id=ids.get("input", "file-none"),
        output_file_id=ids.get("output"),
        error_file_id=ids.get("error"),
    )
    batch = record_batch(services.ApiBatch.from_api(data))
    kept, _ = ResultArchive.objects.get_or_create(batch=batch)  # recording a final batch may have asked for it
    ResultArchive.objects.filter(pk=kept.pk).update(state=ArchiveState.ARCHIVING)
    kept.refresh_from_db()
    return batch, kept


def _fetch(kept: ResultArchive, *, last_try: bool = True) -> ResultArchive:
    """Fetch as the keep_results reaction does; what it would record as the reaction's failure is on the archive."""
    with contextlib.suppress(reactions.Failed):
        archive.fetch_archive(kept, services.get_client(), last_try=last_try)
    kept.refresh_from_db()
    return kept


def _stored_files(settings) -> list[Path]:
    root = Path(settings.STORAGES["results"]["OPTIONS"]["location"])
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


# --- Finding 4: bounds ----------------------------------------------------------------------


@pytest.mark.django_db
def test_finding_4_a_result_file_larger_than_the_cap_is_not_kept_and_the_archive_says_why(fake_api, settings):
    settings.BATCHBOARD_RESULT_FILE_MAX_MB = 1
    chunks, length = long_answer("a", 2 * MB)
    serve_file(fake_api, "file-big", stream=chunks, length=length)
    serve_file(fake_api, "file-in", _jsonl([input_record("a")]))
    data = payload("completed", input_file_id="file-in", output_file_id="file-big", error_file_id=None)
    batch = record_batch(services.ApiBatch.from_api(data))

    kept = _fetch(ResultArchive.objects.update_or_create(batch=batch, defaults={"state": ArchiveState.ARCHIVING})[0])

    assert kept.state == ArchiveState.UNAVAILABLE
    assert "BATCHBOARD_RESULT_FILE_MAX_MB (1 MB)" in kept.problem and "2 MB" in kept.problem
    assert _stored_files(settings) == []
    assert not fake_api.requests_to("GET", "/files/file-big/content")  # refused from its announced size


@pytest.mark.django_db
def test_finding_4_a_file_that_grows_past_the_cap_while_it_downloads_is_not_kept(fake_api, settings, tmp_path):
    settings.BATCHBOARD_RESULT_FILE_MAX_MB = 1
    chunks, _length = long_answer("a", 3 * MB)
    # The File object understates its size and the answer announces none: the cap holds on the bytes that arrive.
    serve_file(fake_api, "file-big", stream=chunks, length=None)
    fake_api.script("GET", "/files/file-big", _file_info("file-big", 10))
    data = payload("completed", input_file_id="file-none", output_file_id="file-big", error_file_id=None)
    kept = _fetch(
        ResultArchive.objects.update_or_create(
            batch=record_batch(services.ApiBatch.from_api(data)), defaults={"state": ArchiveState.ARCHIVING}
        )[0]
    )

    assert kept.state == ArchiveState.UNAVAILABLE and "larger than 1 MB" in kept.problem
    assert _stored_files(settings) == []


def _file_info(file_id, size):
    from tests.fake_api import Reply

    body = {"id": file_id, "object": "file", "bytes": size, "created_at": 1, "filename": "o.jsonl"}
    return Reply(body={**body, "purpose": "batch_output"})


@pytest.mark.once
@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5", str(2**40)])
def test_finding_4_the_file_cap_setting_refuses_bad_values(value):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment["BATCHBOARD_RESULT_FILE_MAX_MB"] = value
    checked = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode != 0
    assert "BATCHBOARD_RESULT_FILE_MAX_MB must be a whole number between 1 and 1,048,576" in checked.stderr


@pytest.mark.django_db
def test_finding_4_a_line_over_10_mb_is_indexed_as_too_long_to_keep_and_its_page_links_the_raw_line(
    fake_api, viewer_client
):
    long_id = "the-long-one"
    output = (
        _jsonl([result_record("short", "fine")])
        + json.dumps(result_record(long_id, "y" * (MAX_LINE_BYTES + 1000))).encode()
        + b"\n"
    )
    batch, kept = _batch(fake_api, input_file=_jsonl([input_record("short"), input_record(long_id)]), output=output)

    kept = _fetch(kept)

    assert kept.state == ArchiveState.READY
    line = ResultLine.objects.get(archive=kept, custom_id=long_id)
    assert line.outcome == Outcome.SUCCEEDED and line.status_code == 200  # read from the line's head
    assert line.result_line == 2 and "too long to keep" in line.preview
    assert kept.summary["unreadable_count"] == 1
    assert kept.summary["unreadable"][0]["line"] == 2 and "too long to keep" in kept.summary["unreadable"][0]["reason"]

    results = viewer_client.get(f"/batches/{batch.batch_id}/results/")
    assert results.status_code == 200 and "too long to keep" in results.text
    page = viewer_client.get(f"/batches/{batch.batch_id}/results/rows/{line.position}/")
    assert page.status_code == 200
    assert len(page.content) < 2 * RENDER_BYTES + 100_000  # not the 10 MB answer
    raw_url = f"/batches/{batch.batch_id}/results/rows/{line.position}/result.jsonl"
    assert raw_url in page.text and "only its start is shown" in page.text

    raw = viewer_client.get(raw_url)
    assert raw.status_code == 200 and raw.streaming
    body = b"".join(raw.streaming_content)
    assert body.rstrip(b"\n") == output.splitlines()[1]  # the line byte for byte


@pytest.mark.django_db
def test_finding_4_a_request_page_shows_at_most_256_kb_of_each_side(fake_api, viewer_client):
    answer = "z" * (RENDER_BYTES * 3)
    request = input_record("big")
    request["body"]["messages"][0]["content"] = "q" * (RENDER_BYTES * 2)
    batch, kept = _batch(fake_api, input_file=_jsonl([request]), output=_jsonl([result_record("big", answer)]))
    _fetch(kept)

    page = viewer_client.get(f"/batches/{batch.batch_id}/results/rows/1/")

    assert page.status_code == 200
    assert len(page.content) < 2 * RENDER_BYTES + 100_000
    assert page.text.count("only its start is shown") == 2
    full = viewer_client.get(f"/batches/{batch.batch_id}/results/rows/1/input.jsonl")
    assert json.loads(b"".join(full.streaming_content)) == request


@pytest.mark.django_db
def test_finding_4_raw_lines_are_only_served_for_kept_lines(fake_api, viewer_client):
    batch, kept = _batch(fake_api, input_file=_jsonl([input_record("a")]), output=_jsonl([result_record("a")]))
    _fetch(kept)

    for url in ("rows/9/result.jsonl", "rows/1/other.jsonl", f"rows/{2**40}/input.jsonl"):
        assert viewer_client.get(f"/batches/{batch.batch_id}/results/{url}").status_code == 404
    assert viewer_client.get(f"/batches/{batch.batch_id}/results/rows/1/result.jsonl").status_code == 200


# Run in a fresh process (its peak resident memory, VmHWM, is the figure): fetch and index a batch whose files a fake
# API (in a process of its own) generates as it sends them, then render the request page of the longest line and
# stream its raw line and the exports through the test client.
_MEASURE = """
import json, os, sys
import django
django.setup()
from django.conf import settings
settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
from django.contrib.auth import get_user_model
from django.test import Client
from batches import services
from batches.models import record_batch
from results import archive
from results.models import ArchiveState, ResultArchive
from tests.batch_api import payload
from tests.hostile_api import Served, peak_mb

long_bytes, lines = int(sys.argv[1]), int(sys.argv[2])
spec = {
    "file-out": ["long", "req-0000000", long_bytes],
    "file-err": ["errors", lines],
    "file-in": ["inputs", lines],
}
with Served(spec) as url:
    settings.OPENAI_BASE_URL = url
    settings.OPENAI_MAX_RETRIES = 0
    data = payload("completed", input_file_id="file-in", output_file_id="file-out", error_file_id="file-err")
    batch = record_batch(services.ApiBatch.from_api(data))
    kept = ResultArchive.objects.update_or_create(batch=batch, defaults={"state": ArchiveState.ARCHIVING})[0]
    archive.fetch_archive(kept, services.get_client())
kept.refresh_from_db()
after_fetch = peak_mb()
user = get_user_model().objects.create_superuser("measure")
client = Client()
client.force_login(user)
sizes = {}
for name, url in (
    ("request", f"/batches/{batch.batch_id}/results/rows/1/"),
    ("raw", f"/batches/{batch.batch_id}/results/rows/1/result.jsonl"),
    ("results", f"/batches/{batch.batch_id}/results/?outcome=failed"),
    ("csv", f"/batches/{batch.batch_id}/results/export.csv"),
    ("jsonl", f"/batches/{batch.batch_id}/results/export.jsonl"),
    ("file", f"/batches/{batch.batch_id}/results/files/error.jsonl"),
):
    response = client.get(url)
    size = 0
    for chunk in (response.streaming_content if response.streaming else [response.content]):
        size += len(chunk)
    sizes[name] = (response.status_code, size)
peak = peak_mb()
print(json.dumps({"state": kept.state, "problem": kept.problem, "rows": kept.summary.get("rows"),
                  "after_fetch": after_fetch, "peak": peak, "sizes": sizes}))
"""


@pytest.mark.django_db(transaction=True)
def test_finding_4_peak_memory_stays_under_150_mb_for_a_long_line_and_many_lines(database_url, settings, tmp_path):
    environment = process_environment(database_url, BATCHBOARD_RESULTS_DIR=str(tmp_path / "kept"))
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(30 * MB), "20000"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert measured.returncode == 0, measured.stderr[-3000:]
    figures = json.loads(measured.stdout.strip().splitlines()[-1])
    assert figures["state"] == "ready", figures["problem"]
    assert figures["rows"] == 20_001  # req-0000000 has the long answer and an error line: shown as a duplicate
    assert all(status == 200 for status, _size in figures["sizes"].values()), figures["sizes"]
    assert figures["sizes"]["request"][1] < 2 * RENDER_BYTES + 100_000
    assert figures["sizes"]["raw"][1] > 30 * MB
    assert figures["peak"] < PEAK_MEMORY_MB, figures


# --- Finding 5: NUL bytes, and database errors while indexing ---------------------------------


@pytest.mark.django_db
def test_finding_5_nul_in_result_lines_is_stored_and_a_custom_id_with_nul_has_its_own_page(fake_api, viewer_client):
    nul_id = "req\x00one"
    output = _jsonl(
        [
            result_record(nul_id, "answer\x00 with nul"),
            result_record("plain", "fine"),
            {"custom_id": "err\x00", "error": {"code": "batch_expired\x00", "message": "m\x00"}},
        ]
    )
    error = _jsonl([result_record("bad", "failed\x00 here", 400, code="co\x00de")])
    inputs = _jsonl([input_record(nul_id), input_record("plain"), input_record("bad")])
    batch, kept = _batch(fake_api, input_file=inputs, output=output, error=error)

    kept = _fetch(kept)

    assert kept.state == ArchiveState.READY, kept.problem
    stored = dict(ResultLine.objects.filter(archive=kept).values_list("custom_id", "outcome"))
    assert stored == {"req\ufffdone": "succeeded", "plain": "succeeded", "bad": "failed", "err\ufffd": "expired"}
    assert ResultLine.objects.get(archive=kept, custom_id="bad").error_code == "code"
    results = viewer_client.get(f"/batches/{batch.batch_id}/results/")
    assert results.status_code == 200
    position = ResultLine.objects.get(archive=kept, custom_id="req\ufffdone").position
    link = f"/batches/{batch.batch_id}/results/rows/{position}/"
    assert link in results.text
    page = viewer_client.get(link)
    assert page.status_code == 200 and "answer\\u0000 with nul" in page.text  # the line, its NUL escaped
    # The id as the API wrote it, NUL and all, leads to the same page.
    found = viewer_client.get(f"/batches/{batch.batch_id}/results/rows/?custom_id=req%00one")
    assert found.status_code == 302 and found["Location"] == link


@pytest.mark.django_db
def test_finding_5_a_database_error_while_indexing_is_a_failed_attempt_with_its_reason(fake_api, settings, monkeypatch):
    _batch_row, kept = _batch(fake_api, input_file=_jsonl([input_record("a")]), output=_jsonl([result_record("a")]))
    rows = archive._rows

    def rows_with_a_refused_one(*args):
        produced = list(rows(*args))
        yield from produced
        yield produced[0]  # the same position again: the unique constraint refuses it on every database

    monkeypatch.setattr(archive, "_rows", rows_with_a_refused_one)

    with pytest.raises(IntegrityError):  # raised for the keep_results reaction, which tries again with backoff
        _fetch(kept, last_try=False)
    kept.refresh_from_db()

    assert kept.state == ArchiveState.RETRY and kept.attempts == 1
    assert "IntegrityError" in kept.problem and "will try again" in kept.problem
    assert not ResultLine.objects.filter(archive=kept).exists()
    assert _stored_files(settings) == []  # nothing stored that no index refers to
    ResultArchive.objects.filter(pk=kept.pk).update(state=ArchiveState.ARCHIVING)
    kept = _fetch(kept, last_try=True)  # the reaction's last try: given up on, with the reason
    assert kept.state == ArchiveState.UNAVAILABLE and "IntegrityError" in kept.problem

    monkeypatch.setattr(archive, "_rows", rows)
    ResultArchive.objects.filter(pk=kept.pk).update(state=ArchiveState.ARCHIVING)
    assert _fetch(kept).state == ArchiveState.READY


@pytest.mark.django_db
def test_finding_5_a_hostile_result_file_is_kept_on_every_database(fake_api, viewer_client):
    rng = random.Random(5)
    inputs, output, error = hostile_result_files(rng, 200)
    batch, kept = _batch(fake_api, input_file=inputs, output=output, error=error)

    kept = _fetch(kept)

    assert kept.state == ArchiveState.READY, kept.problem
    assert kept.summary["rows"] >= 150 and kept.summary["unreadable_count"] > 0
    assert Batch.objects.filter(pk=batch.pk).exists()
    for row in ResultLine.objects.filter(archive=kept):
        assert "\x00" not in row.custom_id + row.error_code + row.error_message + row.preview
