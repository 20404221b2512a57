"""Lineage recorded in one place and verified: a retry is linked whichever path recorded it (the sync loop's bulk
insert included), and counts in a job only once its lines are shown to be its parent's, byte for byte; a forged
claim is shown as such and never reaches the job's final results, exports, cost or view.
"""

import csv
import importlib
import io
import json
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from batches import lookups, reactions, services, sync
from batches.lineage_keys import LineageState
from batches.models import Batch, Reaction, ReactionState, record_batch
from results import archive
from results.models import ArchiveState, ResultArchive
from retries import lineage, merged, verify
from sandbox.models import SandboxBatch
from tests.batch_api import payload
from tests.conftest import input_line, kept_batch, kept_retry

CHAT = "/v1/chat/completions"
DAY = 86_400


def _input_of(batch) -> dict[str, bytes]:
    kept = ResultArchive.objects.get(batch=batch)
    with archive.StoredFiles(kept) as files:
        return {line.custom_id: files.input_bytes(line) for line in kept.lines.input_lines()}


def _page(client, batch_id: str) -> str:
    return client.get(reverse("batches:detail", args=[batch_id])).content.decode()


# --- A retry made elsewhere, first seen by the sync loop ---------------------------------------------------


def _create_in_sandbox(path: Path, lines: list[bytes], metadata: dict | None = None) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    client = services.get_client()
    uploaded = client.upload_file(path)
    return client.create_batch(input_file_id=uploaded.id, endpoint=CHAT, metadata=metadata).id


def _finish_and_keep(batch_id: str, tasks) -> Batch:
    """The batch finishes upstream and a page records it: a task worker keeps its results."""
    SandboxBatch.objects.filter(pk=batch_id).update(created=F("created") - 10 * DAY)
    batch, _ = lookups.refresh_batch(batch_id)
    assert batch.is_terminal
    assert tasks.drain() >= 1
    assert ResultArchive.objects.get(batch=batch).is_ready
    return Batch.objects.get(pk=batch.pk)


@pytest.mark.django_db
def test_a_retry_made_through_the_api_is_linked_by_the_bulk_insert_and_shown_once_it_completes(
    viewer_client, sandbox_url, settings, tmp_path, tasks
):
    settings.SANDBOX_SPEED = 1.0
    lines = [input_line(f"api-{n}", n) for n in range(4)]
    parent_id = _create_in_sandbox(tmp_path / "parent.jsonl", lines)
    sync.run_pass(force=True)  # a fresh install: the first page is inserted in bulk
    _finish_and_keep(parent_id, tasks)

    # A script elsewhere retries two of the lines, copying them byte for byte and naming the parent.
    child_id = _create_in_sandbox(tmp_path / "child.jsonl", lines[1:3], {"batchboard_retry_of": parent_id})
    assert sync.run_pass(force=True).result.changed == 1  # a fresh page of the list: one more bulk insert
    tasks.drain()
    child = Batch.objects.get(batch_id=child_id)
    assert (child.retry_of, child.job, child.attempt) == (parent_id, parent_id, 1)
    assert child.lineage_state == LineageState.UNVERIFIED
    waiting = Reaction.objects.get(batch=child, step=verify.STEP)
    assert waiting.state == ReactionState.PENDING and "to finish" in waiting.error
    page = _page(viewer_client, child_id)
    assert "Claims to retry" in page and "not verified yet" in page and 'id="retry-of"' not in page

    _finish_and_keep(child_id, tasks)  # its results kept: the waiting check runs at once
    assert Batch.objects.get(batch_id=child_id).lineage_state == LineageState.VERIFIED
    child_page, parent_page = _page(viewer_client, child_id), _page(viewer_client, parent_id)
    assert 'id="retry-of"' in child_page and "Retry of" in child_page and parent_id in child_page
    assert "Retried by" in parent_page and child_id in parent_page and "(1 time)" in parent_page
    assert set(lineage.chain(parent_id).values_list("batch_id", flat=True)) == {parent_id, child_id}


@pytest.mark.django_db
def test_a_claim_waits_for_both_inputs_and_asks_for_the_parents_to_be_kept(tmp_path, settings):
    settings.BATCHBOARD_ARCHIVE = "on-open"  # nobody asked for the parent's files
    parent = record_batch(services.ApiBatch.from_api(payload("completed")))  # final, with files, not kept
    child = kept_batch({"a": "ok"}, tmp_path, metadata={"batchboard_retry_of": parent.batch_id})

    verdict = verify.verify(child)

    assert (verdict.state, verdict.wait) == (LineageState.UNVERIFIED, True)
    assert ResultArchive.objects.get(batch=parent).state == ArchiveState.REQUESTED
    assert Reaction.objects.filter(batch=parent, step=archive.KEEP_STEP).exists()
    unknown = kept_batch({"a": "ok"}, tmp_path, metadata={"batchboard_retry_of": "batch_never_seen"})
    assert verify.verify(unknown).wait and "has not been seen" in unknown.lineage_note


# --- A forged claim ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_forged_link_is_shown_as_not_verified_and_stays_out_of_final_results_and_exports(
    viewer_client, tmp_path, tasks
):
    original = kept_batch({"a": 429, "b": 500, "c": "ok"}, tmp_path, created_at=1_700_000_000)
    # Someone who may create batches names the job on batches of their own: one line copied, one not; all answered.
    claim = {"batchboard_retry_of": original.batch_id, "batchboard_job": original.batch_id, "batchboard_attempt": "1"}
    forged = kept_batch(
        {"a": "ok", "b": "ok"},
        tmp_path,
        metadata=claim,
        created_at=1_700_000_100,
        lines={"a": _input_of(original)["a"], "b": input_line("b", 5)},
    )
    tasks.drain()  # the check scheduled when it was recorded, woken when its results were kept
    forged.refresh_from_db()
    assert forged.lineage_state == LineageState.NOT_MATCHING and "line 2" in forged.lineage_note
    assert Reaction.objects.get(batch=forged, step=verify.STEP).state == ReactionState.DONE

    page = _page(viewer_client, forged.batch_id)
    assert "Claims to retry" in page and f"not verified: its lines are not {original.batch_id}" in page
    assert 'id="retry-of"' not in page
    original_page = _page(viewer_client, original.batch_id)
    assert "Retried by" not in original_page and forged.batch_id not in original_page

    job = merged.load_job(original.batch_id)
    assert [batch.batch_id for batch in job.batches] == [original.batch_id]
    assert merged.counts(job).failing == {"failed": 2}
    final = viewer_client.get(reverse("retries:final", args=[original.batch_id])).content.decode()
    assert forged.batch_id not in final and "answer to a" not in final
    exported = viewer_client.get(reverse("retries:final_csv", args=[original.batch_id]))
    table = list(csv.reader(io.StringIO(b"".join(exported.streaming_content).decode("utf-8-sig"))))
    assert [(row[1], row[2]) for row in table[1:]] == [("a", "failed"), ("b", "failed"), ("c", "succeeded")]
    assert {row[8] for row in table[1:]} == {original.batch_id}
    jsonl = viewer_client.get(reverse("retries:final_jsonl", args=[original.batch_id]))
    records = [json.loads(line) for line in b"".join(jsonl.streaming_content).splitlines()]
    assert {record["batch"] for record in records} == {original.batch_id}

    listed = viewer_client.get(reverse("batches:list") + f"?job={original.batch_id}").content.decode()
    assert f'id="row-{forged.batch_id}"' not in listed and f'id="row-{original.batch_id}"' in listed
    every = viewer_client.get(reverse("batches:list")).content.decode()
    assert "claims to retry" in every and "↻" not in every
    originals = viewer_client.get(reverse("batches:list") + "?jobs=originals").content.decode()
    assert f'id="row-{forged.batch_id}"' in originals  # its own job, as far as anyone can tell


@pytest.mark.django_db
def test_lines_copied_byte_for_byte_still_do_not_count_under_another_job_or_behind_a_forged_parent(tmp_path):
    original = kept_batch({"a": 429, "b": 500}, tmp_path)
    other = kept_batch({"x": "ok"}, tmp_path)
    copied = {"batchboard_retry_of": original.batch_id, "batchboard_job": other.batch_id}
    wrong_job = kept_batch({"a": "ok"}, tmp_path, metadata=copied, lines=_input_of(original))
    assert verify.verify(wrong_job).state == LineageState.NOT_MATCHING
    assert f"is in {original.batch_id}" in wrong_job.lineage_note

    claim = {"batchboard_retry_of": original.batch_id}
    forged = kept_batch({"a": "ok"}, tmp_path, metadata=claim, lines={"a": input_line("a", 1)})
    assert verify.verify(forged).state == LineageState.NOT_MATCHING
    # A true retry of the forged batch belongs to the forged batch's own job, never to the job it claimed.
    behind = kept_retry(forged, {"a": "ok"}, tmp_path)
    assert behind.lineage_state == LineageState.VERIFIED and behind.job == forged.batch_id
    assert set(lineage.chain(original.batch_id).values_list("batch_id", flat=True)) == {original.batch_id}
    assert set(lineage.chain(forged.batch_id).values_list("batch_id", flat=True)) == {
        forged.batch_id,
        behind.batch_id,
    }


@pytest.mark.django_db
def test_verifying_a_long_input_streams_it(tmp_path, monkeypatch):
    """A line split across read chunks, a CRLF line end and blank lines are read as a line reader would."""
    monkeypatch.setattr(verify, "READ_CHUNK", 7)
    outcomes = {f"long-{n}": 429 for n in range(30)}
    original = kept_batch(outcomes, tmp_path)
    lines = _input_of(original)
    child = kept_batch(
        {"long-3": "ok", "long-17": "ok"},
        tmp_path,
        metadata={"batchboard_retry_of": original.batch_id},
        lines={"long-3": lines["long-3"], "long-17": lines["long-17"] + b"\r"},
    )
    assert verify.verify(child).state == LineageState.VERIFIED


@pytest.mark.django_db
def test_the_upgrade_fills_the_claims_of_stored_batches_and_asks_for_each_to_be_checked():
    migration = importlib.import_module("batches.migrations.0016_lineage_from_metadata")
    claim = {"batchboard_retry_of": "batch_parent", "batchboard_job": "batch_job", "batchboard_attempt": "2"}
    retry = record_batch(services.ApiBatch.from_api(payload("completed", metadata=claim)))
    plain = record_batch(services.ApiBatch.from_api(payload("completed", metadata={"x": "batchboard_retry_of"})))
    Batch.objects.update(retry_of="", job="", attempt=0, lineage_state="")  # as stored before the upgrade

    migration.fill_lineage(django_apps, None)

    retry.refresh_from_db()
    assert (retry.retry_of, retry.job, retry.attempt, retry.lineage_state) == (
        "batch_parent",
        "batch_job",
        2,
        LineageState.UNVERIFIED,
    )
    assert Batch.objects.get(pk=plain.pk).retry_of == ""
    check = Reaction.objects.get(batch=retry)
    assert (check.step, check.state) == (verify.STEP, ReactionState.PENDING)
    assert check.run_after < timezone.now() - reactions.LOST_AFTER  # the next sweep enqueues it


@pytest.mark.django_db
def test_a_claim_waiting_for_its_parent_is_checked_again_as_soon_as_the_parent_is_recorded(tmp_path, tasks, fake_api):
    parent = payload("completed")
    child = kept_batch({"a": "ok"}, tmp_path, metadata={"batchboard_retry_of": parent["id"]})
    tasks.drain()
    check = Reaction.objects.get(batch=child, step=verify.STEP)
    assert check.state == ReactionState.PENDING and "has not been seen" in check.error

    record_batch(services.ApiBatch.from_api(parent))
    tasks.drain()  # no time passes: the parent's recording woke the check

    check.refresh_from_db()
    assert check.state == ReactionState.PENDING and check.error == "waiting for both inputs to be kept"
    assert Reaction.objects.filter(batch__batch_id=parent["id"], step=archive.KEEP_STEP).exists()


@pytest.mark.django_db
def test_a_verdict_outlives_later_observations_of_the_batch():
    claim = {"batchboard_retry_of": "batch_parent", "batchboard_attempt": "1"}
    running = payload("in_progress", metadata=claim)
    child = record_batch(services.ApiBatch.from_api(running))
    Batch.objects.filter(pk=child.pk).update(lineage_state=LineageState.NOT_MATCHING, lineage_note="its lines differ")

    running["request_counts"] = {"total": 10, "completed": 10, "failed": 0}
    running.update(status="completed", completed_at=running["created_at"] + 60)
    record_batch(services.ApiBatch.from_api(running))

    child.refresh_from_db()
    assert (child.status, child.lineage_state, child.lineage_note) == ("completed", "not_matching", "its lines differ")
