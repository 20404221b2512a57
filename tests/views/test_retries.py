"""Retrying lines as a linked batch: choosing the lines, the input built byte for byte, the confirmation and the
create through the sandbox, lineage, the merged result of a job, automatic retries.

A parent batch's results are kept from files written here (so a test decides every line's outcome, 429s included);
retries are created in, and run by, the sandbox over real HTTP.
"""

import csv
import io
import itertools
import json
import re
import uuid
from datetime import timedelta

import pytest
import requests
from django.db.models import F
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from batches import lookups, reactions, services
from batches.lineage_keys import LineageState
from batches.models import Batch, Reaction, ReactionState, SyncState, record_batch
from batches.sync import LIST_STATE
from results import archive
from results.events import results_kept
from results.models import ResultArchive, ResultFilter
from retries import auto, lineage, merged, submit, verify
from retries.models import AutoRetry, AutoRetryState
from retries.selection import RetrySelection
from sandbox import results as sandbox_results
from sandbox.models import SandboxBatch
from tests.batch_api import payload
from tests.conftest import input_line, kept_batch, kept_retry

CHAT = "/v1/chat/completions"
DAY = 86_400


MIXED = {
    "a-ok": "ok",
    "b-429": 429,
    "c-400": 400,
    "d-500": 500,
    "e-expired": "expired",
    "f-cancelled": "cancelled",
    "g-missing": "missing",
    "h-429": 429,
    "i-ok": "ok",
}


def selected(batch, query: str) -> list[str]:
    selection = RetrySelection.from_query(QueryDict(query))
    return list(selection.lines(ResultArchive.objects.get(batch=batch)).in_order().values_list("custom_id", flat=True))


# --- Choosing the lines ------------------------------------------------------------


@pytest.mark.django_db
def test_each_criterion_selects_its_lines(tmp_path):
    batch = kept_batch(MIXED, tmp_path)
    assert selected(batch, "select=failed") == ["b-429", "c-400", "d-500", "h-429"]
    assert selected(batch, "select=unrun") == ["e-expired", "f-cancelled"]
    assert selected(batch, "select=missing") == ["g-missing"]
    assert selected(batch, "select=unanswered") == [c for c, o in MIXED.items() if o != "ok"]
    assert selected(batch, "select=transient") == ["b-429", "d-500", "e-expired", "h-429"]
    assert selected(batch, "select=filter&status=429") == ["b-429", "h-429"]
    assert selected(batch, "select=filter&code=invalid_value") == ["c-400"]
    group = next(g for g in ResultArchive.objects.get(batch=batch).summary["groups"] if g["status"] == 429)["number"]
    assert selected(batch, f"select=filter&group={group}") == ["b-429", "h-429"]
    assert selected(batch, "select=filter&q=h-4") == ["h-429"]
    assert RetrySelection.from_query(QueryDict("select=nonsense")) is None
    assert RetrySelection.from_query(QueryDict("select=filter")) is None  # a filter that selects everything


@pytest.mark.django_db
def test_the_input_is_the_original_lines_byte_for_byte(tmp_path):
    outcomes = {f"id-{n}": (429 if n % 4 == 0 else "ok") for n in range(40)}
    batch = kept_batch(outcomes, tmp_path)
    handle, count = submit.build_input(ResultArchive.objects.get(batch=batch), RetrySelection("failed", ResultFilter()))
    expected = b"".join(input_line(c, n) + b"\n" for n, c in enumerate(outcomes) if outcomes[c] == 429)
    assert count == 10
    assert handle.read() == expected


# --- The confirmation and the create -----------------------------------------------


def _retry_url(batch, query=""):
    return reverse("retries:confirm", args=[batch.batch_id]) + (f"?{query}" if query else "")


def _post(client, batch, token, **fields):
    return client.post(_retry_url(batch), {"token": str(token), "completion_window": "24h", **fields})


def _sandbox_batches(sandbox_url):
    headers = {"Authorization": "Bearer sk-sandbox"}
    return requests.get(f"{sandbox_url}/batches", headers=headers, timeout=10).json()["data"]


@pytest.mark.django_db
def test_the_confirmation_shows_the_exact_count_and_the_estimate(operator_client, tmp_path):
    batch = kept_batch(MIXED, tmp_path)
    chooser = operator_client.get(_retry_url(batch)).content.decode()
    assert "Every failed line" in chooser and "<strong>4</strong> lines" in chooser
    page = operator_client.get(_retry_url(batch, "select=filter&status=429")).content.decode()
    assert 'id="retry-count">2</strong>' in page
    assert "Estimated cost" in page and "for the inputs of 2 requests" in page
    assert f"batchboard_retry_of={batch.batch_id}" in page


@pytest.mark.django_db
def test_viewers_cannot_retry_and_are_audited(viewer_client, tmp_path, fake_api):
    batch = kept_batch(MIXED, tmp_path)
    assert viewer_client.get(_retry_url(batch, "select=failed")).status_code == 403
    assert _post(viewer_client, batch, uuid.uuid4(), select="failed").status_code == 403
    assert fake_api.received == []
    assert AuditEvent.objects.filter(action="create", outcome="refused", batch_id=batch.batch_id).exists()


@pytest.mark.django_db
def test_a_post_without_csrf_is_refused(operator, tmp_path, fake_api):
    from django.test import Client

    batch = kept_batch(MIXED, tmp_path)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert _post(client, batch, uuid.uuid4(), select="failed").status_code == 403
    assert fake_api.received == []


@pytest.mark.django_db
def test_it_creates_one_linked_batch_even_when_submitted_twice(operator_client, sandbox_url, tmp_path):
    batch = kept_batch(MIXED, tmp_path, metadata={"project": "nightly"})
    token = uuid.uuid4()
    first = _post(operator_client, batch, token, select="filter", status="429")
    second = _post(operator_client, batch, token, select="filter", status="429")
    assert first.status_code == second.status_code == 303
    assert first["Location"] == second["Location"]
    created = _sandbox_batches(sandbox_url)
    assert len(created) == 1
    assert created[0]["metadata"] == {
        "project": "nightly",
        "batchboard_retry_of": batch.batch_id,
        "batchboard_job": batch.batch_id,
        "batchboard_attempt": "1",
    }
    uploaded = b"".join(services.get_client().file_content(created[0]["input_file_id"]))
    assert uploaded == input_line("b-429", 1) + b"\n" + input_line("h-429", 7) + b"\n"
    retry = Batch.objects.get(batch_id=created[0]["id"])
    assert (retry.retry_of, retry.job, retry.attempt) == (batch.batch_id, batch.batch_id, 1)
    assert retry.lineage_state == LineageState.VERIFIED  # built here from the kept lines
    events = AuditEvent.objects.filter(action="create", batch_id=retry.batch_id)
    assert sorted(events.values_list("outcome", flat=True)) == ["already", "ok"]
    assert "retry of" in events.first().target

    child_page = operator_client.get(second["Location"]).content.decode()
    assert "This retry was already submitted" in child_page
    assert "Retry of" in child_page and batch.batch_id in child_page
    parent_page = operator_client.get(reverse("batches:detail", args=[batch.batch_id])).content.decode()
    assert "Retried by" in parent_page and retry.batch_id in parent_page and "(1 time)" in parent_page


@pytest.mark.django_db
def test_nothing_to_retry_sends_nothing(operator_client, tmp_path, fake_api):
    batch = kept_batch({"a": "ok", "b": "ok"}, tmp_path)
    page = operator_client.get(_retry_url(batch, "select=failed")).content.decode()
    assert 'id="retry-nothing"' in page
    assert _post(operator_client, batch, uuid.uuid4(), select="failed").status_code == 400
    assert fake_api.received == []


# --- Lineage -------------------------------------------------------------------------


@pytest.mark.django_db
def test_lineage_is_read_from_metadata_whoever_made_the_retry_and_counts_once_verified(tmp_path):
    original = kept_batch({"a": 429, "b": 500, "c": "ok"}, tmp_path)
    claim = {"batchboard_retry_of": original.batch_id}  # a script that names no job and no attempt
    first = kept_batch({"a": 500, "b": 429}, tmp_path, metadata=claim, lines=_input_of(original))
    assert (first.retry_of, first.job, first.attempt) == (original.batch_id, original.batch_id, 1)
    assert first.lineage_state == LineageState.UNVERIFIED and first.job_id == first.batch_id
    assert list(lineage.chain(original.batch_id).values_list("batch_id", flat=True)) == [original.batch_id]
    assert lineage.lineage(first).claims_retry and not lineage.lineage(first).is_retry

    assert verify.verify(first).state == LineageState.VERIFIED
    second = kept_retry(first, {"b": "ok"}, tmp_path, attempt=2)
    plain = record_batch(services.ApiBatch.from_api(payload("completed", metadata={"project": "x"})))
    assert (second.job, second.attempt, second.lineage_state) == (original.batch_id, 2, LineageState.VERIFIED)
    assert (plain.retry_of, plain.job, plain.lineage_state) == ("", "", "")
    assert set(lineage.chain(original.batch_id).values_list("batch_id", flat=True)) == {
        original.batch_id,
        first.batch_id,
        second.batch_id,
    }
    of_first = lineage.lineage(Batch.objects.get(pk=first.pk))
    assert (of_first.parent_id, of_first.retried_by, of_first.retries_in_job, of_first.is_retry) == (
        original.batch_id,
        [second.batch_id],
        2,
        True,
    )


def _input_of(batch) -> dict[str, bytes]:
    """The batch's kept input lines by custom_id, byte for byte."""
    kept = ResultArchive.objects.get(batch=batch)
    with archive.StoredFiles(kept) as files:
        return {line.custom_id: files.input_bytes(line) for line in kept.lines.input_lines()}


@pytest.mark.django_db
def test_a_retry_of_a_retry_keeps_the_job(operator_client, sandbox_url, tmp_path):
    original = kept_batch({"a": 429, "b": "ok"}, tmp_path)
    first = kept_retry(original, {"a": 500}, tmp_path)
    response = _post(operator_client, first, uuid.uuid4(), select="failed")
    assert response.status_code == 303
    created = _sandbox_batches(sandbox_url)[0]
    assert created["metadata"]["batchboard_retry_of"] == first.batch_id
    assert created["metadata"]["batchboard_job"] == original.batch_id
    assert created["metadata"]["batchboard_attempt"] == "2"
    page = operator_client.get(reverse("batches:detail", args=[original.batch_id])).content.decode()
    assert "retried 2 times in all" in page


# --- The merged result ------------------------------------------------------------


@pytest.mark.django_db
def test_the_merged_result_takes_the_latest_success_else_the_last_failure(viewer_client, tmp_path):
    now = 1_700_000_000
    original = kept_batch(
        {"a": "ok", "b": 429, "c": 429, "d": 500, "e": "missing", "f": "expired", "g": 400}, tmp_path, created_at=now
    )
    kept_retry(original, {"b": "ok", "c": 429, "d": 500, "e": "ok", "f": "expired"}, tmp_path, created_at=now + 1)
    last = kept_retry(original, {"c": "ok", "d": 429, "f": "missing", "b": 500}, tmp_path, created_at=now + 2)

    job = merged.load_job(original.batch_id)
    rows = {row.original.custom_id: row for row in merged.iter_rows(job)}
    assert list(rows) == ["a", "b", "c", "d", "e", "f", "g"]
    chosen = {custom_id: (row.best.outcome, row.batch.batch_id) for custom_id, row in rows.items()}
    first_id = job.batches[1].batch_id
    assert chosen["a"] == ("succeeded", original.batch_id)
    assert chosen["b"] == ("succeeded", first_id)  # a later failure does not hide an answer
    assert chosen["c"] == ("succeeded", last.batch_id)
    assert chosen["d"] == ("failed", last.batch_id) and rows["d"].best.status_code == 429  # the last failure
    assert chosen["e"] == ("succeeded", first_id)
    assert chosen["f"] == ("missing", last.batch_id)
    assert chosen["g"] == ("failed", original.batch_id)
    counts = merged.counts(job)
    assert (counts.total, counts.succeeded, counts.failing) == (7, 4, {"failed": 2, "missing": 1})

    page = viewer_client.get(reverse("retries:final", args=[last.batch_id])).content.decode()
    assert 'id="final-failing">3<' in page and 'id="final-succeeded">4<' in page
    failing = viewer_client.get(reverse("retries:final", args=[original.batch_id]) + "?show=failing")
    assert failing.content.decode().count("<tr>") == 1 + 3

    exported = viewer_client.get(reverse("retries:final_csv", args=[original.batch_id]))
    table = list(csv.reader(io.StringIO(b"".join(exported.streaming_content).decode("utf-8-sig"))))
    assert table[0][-1] == "batch" and [row[1] for row in table[1:]] == list("abcdefg")
    assert table[3][2:4] == ["succeeded", "200"] and table[3][7] == "answer to c" and table[3][8] == last.batch_id
    jsonl = viewer_client.get(reverse("retries:final_jsonl", args=[original.batch_id]) + "?show=failing")
    records = [json.loads(line) for line in b"".join(jsonl.streaming_content).splitlines()]
    assert [(r["custom_id"], r["outcome"]) for r in records] == [("d", "failed"), ("f", "missing"), ("g", "failed")]
    assert records[0]["input"]["custom_id"] == "d" and records[0]["result"]["response"]["status_code"] == 429
    assert records[1]["result"] is None


@pytest.mark.django_db
def test_the_results_page_links_to_retry_and_to_the_final_results(operator_client, tmp_path):
    original = kept_batch(MIXED, tmp_path)
    page = operator_client.get(reverse("results:list", args=[original.batch_id]) + "?status=429").content.decode()
    assert "Retry these 2 lines" in page and 'id="final-results"' not in page
    kept_retry(original, {"b-429": "ok"}, tmp_path)
    page = operator_client.get(reverse("results:list", args=[original.batch_id])).content.decode()
    assert 'id="final-results"' in page
    detail = operator_client.get(reverse("batches:detail", args=[original.batch_id])).content.decode()
    assert "?select=filter&amp;group=" in detail


@pytest.mark.django_db
def test_viewers_are_not_offered_retry_links_they_may_not_follow(viewer_client, tmp_path):
    original = kept_batch(MIXED, tmp_path)
    detail = viewer_client.get(reverse("batches:detail", args=[original.batch_id])).content.decode()
    results = viewer_client.get(reverse("results:list", args=[original.batch_id])).content.decode()
    assert "retry-group" not in detail and "retry-group" not in results
    assert "?group=" in detail  # the error groups themselves are still shown, with their links


# --- Automatic retries -----------------------------------------------------------


def _finish_in_sandbox(batch_id: str, tasks) -> Batch:
    """The batch finishes upstream and a page records it: a task worker keeps its results (and, when it asks for
    one, submits its automatic retry)."""
    SandboxBatch.objects.filter(pk=batch_id).update(created=F("created") - 10 * DAY)
    batch, _ = lookups.refresh_batch(batch_id)
    assert batch.is_terminal
    assert tasks.drain() >= 1
    return Batch.objects.get(pk=batch.pk)


@pytest.fixture
def import_done(db):
    """The history import has reached the oldest batch: automatic retries may be sent."""
    SyncState.objects.update_or_create(name=LIST_STATE, defaults={"import_done_at": timezone.now()})


@pytest.mark.django_db
@pytest.mark.usefixtures("import_done")
def test_automatic_retry_is_submitted_once_even_when_its_task_runs_again(sandbox_url, settings, tmp_path, tasks):
    settings.SANDBOX_SPEED = 1.0
    parent = kept_batch(
        {"r-1": 429, "r-2": 503, "r-3": "expired", "r-4": 400, "r-5": "ok"},
        tmp_path,
        metadata={"batchboard_auto_retry": "1"},
    )
    tasks.drain()
    note = AutoRetry.objects.get(parent=parent)
    assert (note.state, note.lines) == (AutoRetryState.SUBMITTED, 3)
    created = _sandbox_batches(sandbox_url)
    assert [b["id"] for b in created] == [note.retry_batch_id]
    assert "batchboard_auto_retry" not in created[0]["metadata"]  # N was 1: the retry retries nothing itself
    assert created[0]["metadata"]["batchboard_attempt"] == "1"
    assert AuditEvent.objects.filter(action="create", outcome="ok", batch_id=note.retry_batch_id).exists()

    # The results announced again: the reaction exists already, nothing is sent.
    results_kept.send(sender=ResultArchive, batch_pk=parent.pk, batch_id=parent.batch_id)
    tasks.drain()
    assert len(_sandbox_batches(sandbox_url)) == 1

    # A worker killed after the create, before anything was stored: the reaction runs again, reads the top of the
    # list, finds the retry there and sends nothing.
    Batch.objects.filter(batch_id=note.retry_batch_id).delete()
    AutoRetry.objects.all().delete()
    Reaction.objects.filter(batch=parent, step="auto_retry").update(
        state=ReactionState.RUNNING, lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert reactions.sweep() == 1
    tasks.drain()
    again = AutoRetry.objects.get(parent=parent)
    assert (again.state, again.retry_batch_id) == (AutoRetryState.FOUND, note.retry_batch_id)
    assert len(_sandbox_batches(sandbox_url)) == 1

    retry = _finish_in_sandbox(note.retry_batch_id, tasks)
    tasks.drain()
    assert (retry.retry_of, retry.attempt) == (parent.batch_id, 1)
    assert not AutoRetry.objects.filter(parent=retry).exists()
    assert len(_sandbox_batches(sandbox_url)) == 1


@pytest.mark.django_db
def test_automatic_retry_sends_nothing_until_the_history_import_is_done(fake_api, tmp_path, tasks, viewer_client):
    parent = kept_batch({"r-1": 429}, tmp_path, metadata={"batchboard_auto_retry": "1"})
    tasks.drain()
    tasks.advance(3600)
    tasks.drain()  # an hour later, still importing: it waits, without counting a try
    assert fake_api.received == []
    waiting = Reaction.objects.get(batch=parent, step="auto_retry")
    assert (waiting.state, waiting.error) == (ReactionState.PENDING, "waiting for the history import to finish")
    assert waiting.tries == 0 and not AutoRetry.objects.exists()
    page = viewer_client.get(reverse("batches:detail", args=[parent.batch_id])).content.decode()
    assert "Automatic retry: waiting for the history import to finish." in page


def _failing_in_sandbox(count: int, attempts: int = 3) -> list[str]:
    """custom_ids the sandbox answers with a 500 at each of the first `attempts` attempts (its failures are chosen by
    a hash of the id and the attempt)."""
    ids = (f"flaky-{n}" for n in range(1_000_000))
    failing = (
        custom_id
        for custom_id in ids
        if all(
            (failure := sandbox_results._random_failure(custom_id, attempt)) and failure["status"] == 500
            for attempt in range(attempts)
        )
    )
    return list(itertools.islice(failing, count))


@pytest.mark.django_db
@pytest.mark.usefixtures("import_done")
def test_automatic_retry_chains_up_to_n_and_a_retry_of_a_retry_names_the_original_job(
    sandbox_url, settings, tmp_path, tasks
):
    settings.SANDBOX_SPEED = 1.0
    ids = _failing_in_sandbox(2)
    parent = kept_batch(dict.fromkeys(ids, 500), tmp_path, metadata={"batchboard_auto_retry": "2"})
    tasks.drain()
    first = AutoRetry.objects.get(parent=parent).retry_batch_id
    _finish_in_sandbox(first, tasks)  # its results kept, its automatic retry follows
    second = AutoRetry.objects.get(parent__batch_id=first).retry_batch_id
    assert second
    retry = _finish_in_sandbox(second, tasks)
    tasks.drain()
    assert not AutoRetry.objects.filter(parent=retry).exists()  # the second retry was the last one asked for
    in_job = Batch.objects.in_job(parent.batch_id).exclude(pk=parent.pk).order_by("attempt")
    assert [(batch.batch_id, batch.attempt) for batch in in_job] == [(first, 1), (second, 2)]
    assert retry.metadata["batchboard_retry_of"] == first
    assert retry.metadata["batchboard_job"] == parent.batch_id  # the original, not its parent
    assert retry.metadata["batchboard_attempt"] == "2"
    assert len(_sandbox_batches(sandbox_url)) == 2
    job = merged.load_job(parent.batch_id)
    assert merged.counts(job).failing == {"failed": 2}


def test_retries_left_is_bounded():
    assert auto.retries_left({"batchboard_auto_retry": "3"}) == 3
    assert auto.retries_left({"batchboard_auto_retry": "99"}) == 5
    assert auto.retries_left({"batchboard_auto_retry": "-1"}) == 0
    assert auto.retries_left({}) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "metadata",
    [
        {"batchboard_retry_of": "see <x>"},
        {"batchboard_retry_of": "batch_" + "a" * 200},
        {"batchboard_retry_of": "batch_a/../b"},
        {"batchboard_retry_of": ""},
        {"batchboard_job": "batch_abc", "batchboard_attempt": "3"},
    ],
)
def test_metadata_that_names_no_other_batch_links_nothing(metadata):
    batch = record_batch(services.ApiBatch.from_api(payload("completed", metadata=metadata)))
    assert (batch.retry_of, batch.job, batch.attempt, batch.lineage_state) == ("", "", 0, "")


@pytest.mark.django_db
def test_a_batch_that_names_itself_links_nothing_and_odd_jobs_and_attempts_are_tamed():
    data = payload("completed")
    data["metadata"] = {"batchboard_retry_of": data["id"]}
    assert record_batch(services.ApiBatch.from_api(data)).retry_of == ""
    odd = {"batchboard_retry_of": "batch_parent", "batchboard_job": "<b>", "batchboard_attempt": "²"}
    batch = record_batch(services.ApiBatch.from_api(payload("completed", metadata=odd)))
    assert (batch.retry_of, batch.job, batch.attempt) == ("batch_parent", "batch_parent", 1)
    huge = {"batchboard_retry_of": "batch_parent", "batchboard_attempt": "99999"}
    assert record_batch(services.ApiBatch.from_api(payload("completed", metadata=huge))).attempt == 1


# --- The list: one job with its retries, or original jobs only -----------------------------


def _job_of_three_retries():
    original = record_batch(services.ApiBatch.from_api(payload("completed")))
    retries = [
        record_batch(
            services.ApiBatch.from_api(
                payload(
                    "completed",
                    metadata={"batchboard_retry_of": original.batch_id, "batchboard_job": original.batch_id},
                )
            )
        )
        for _ in range(3)
    ]
    # What the verification finds for lines copied from the original (its files are not kept in these tests).
    Batch.objects.filter(pk__in=[b.pk for b in retries]).update(lineage_state=LineageState.VERIFIED)
    other = record_batch(services.ApiBatch.from_api(payload("completed")))
    return original, retries, other


def _row_ids(html: str) -> set[str]:
    return set(re.findall(r'<tr id="row-(batch_[^"]+)"', html))


@pytest.mark.django_db
def test_the_list_groups_a_job_with_its_retries_or_shows_originals_only(viewer_client):
    original, retries, other = _job_of_three_retries()
    retry_ids = {b.batch_id for b in retries}
    url = reverse("batches:list")
    every = viewer_client.get(url).content.decode()
    assert _row_ids(every) == {original.batch_id, other.batch_id, *retry_ids}
    assert (
        f'<a class="job-retries" id="job-{original.batch_id}" href="{url}?job={original.batch_id}">↻ 3 retries</a>'
        in every
    )
    assert every.count(f'retry of <a class="mono" href="{reverse("batches:detail", args=[original.batch_id])}">') == 3
    assert 'id="job-notice"' not in every
    assert '<select id="filter-jobs" name="jobs" data-submit-on-change>' in every

    originals = viewer_client.get(url + "?jobs=originals").content.decode()
    assert _row_ids(originals) == {original.batch_id, other.batch_id}
    assert '<option value="originals" selected>Original jobs only</option>' in originals
    assert 'all <span class="count">2</span>' in originals  # the status counts are those of the originals

    job = viewer_client.get(url + f"?job={retries[0].batch_id}").content.decode()
    assert _row_ids(job) == {retries[0].batch_id}  # a retry's id is no job: only the batch itself
    job = viewer_client.get(url + f"?job={original.batch_id}").content.decode()
    assert _row_ids(job) == {original.batch_id, *retry_ids}
    assert 'id="job-notice"' in job
    assert reverse("retries:final", args=[original.batch_id]) in job
    assert f'<input type="hidden" name="job" value="{original.batch_id}">' in job  # kept by the filter form

    for bad in ("<script>", "batch_a b", "x" * 600, "batch_\x00"):
        response = viewer_client.get(url, {"job": bad, "jobs": "everything"})
        html = response.content.decode()
        assert response.status_code == 200 and _row_ids(html) == {original.batch_id, other.batch_id, *retry_ids}
        assert "is not a batch id; showing every job." in html and "There is no job filter" in html
        assert "<script>" not in html.split('id="filter-q"')[0]  # escaped in the notice


@pytest.mark.django_db
def test_the_polled_table_keeps_the_job_filters(viewer_client, settings):
    settings.BATCHBOARD_REFRESH_INTERVAL = 60.0  # renderings are shared between polls of one URL
    original, retries, other = _job_of_three_retries()
    url = reverse("batches:list")
    poll = {"HX-Request": "true"}
    every = viewer_client.get(url, headers=poll).content.decode()
    job = viewer_client.get(url + f"?job={original.batch_id}", headers=poll).content.decode()
    originals = viewer_client.get(url + "?jobs=originals", headers=poll).content.decode()
    assert _row_ids(every) == {original.batch_id, other.batch_id, *(b.batch_id for b in retries)}
    assert _row_ids(job) == {original.batch_id, *(b.batch_id for b in retries)}
    assert _row_ids(originals) == {original.batch_id, other.batch_id}
    assert "↻ 3 retries" in job and "↻ 3 retries" in originals
    assert f'hx-get="{url}?job={original.batch_id}"' in job  # the table keeps polling this job
    assert 'id="status-chip-all"' in originals and 'all <span class="count">2</span>' in originals
