"""Every polled region answers the same way, whatever app renders a part of it: at the server's interval, 204 when
what it shows has not changed, 286 once nothing in it can change. The detail panel keeps polling a final batch
while its results card or its retries card may still fill in; the results page polls like the others.

Results are kept here by calling the archive step in the test (whoever runs it in production): the pages depend only
on the archive becoming ready in the database.
"""

import json
import re

import pytest
from django.apps import apps
from django.urls import reverse

from batches import sections, services
from batches.lineage_keys import RETRY_OF_KEY, LineageState
from batches.models import Batch, record_batch
from results.archive import StoredFiles
from results.models import ArchiveState, ResultArchive
from retries.models import AUTO_RETRY_KEY, AutoRetry, AutoRetryState
from tests.batch_api import payload
from tests.conftest import TaskQueue, keep_results, kept_batch
from tests.fake_api import Reply

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
STOP_POLLING = 286


@pytest.fixture(autouse=True)
def _still_clock(monkeypatch):
    """Every request of a test in the same 10-second clock step (the step is part of every answer's key)."""
    monkeypatch.setattr("batches.views.live.time.time", lambda: 1_800_000_000.0)


def _region(html: str, region_id: str) -> str:
    return re.search(rf'<div id="{region_id}"[^>]*>', html).group(0)


def _shown_key(html: str, region_id: str) -> str:
    return json.loads(re.search(r"hx-headers='([^']*)'", _region(html, region_id)).group(1))["X-Batchboard-Shown"]


def _polls(html: str, region_id: str) -> bool:
    region = _region(html, region_id)
    return "data-live-poll" in region and "hx-trigger=" in region


def _poll(client, url, key):
    return client.get(url, HTTP_X_BATCHBOARD_SHOWN=key, **HTMX)


def _committed() -> None:
    """What a commit does after recording a batch final: the results app asks for its files (not fetched yet)."""
    TaskQueue().commit_callbacks()


def _completed_with_files_upstream(api, fake_api, *, committed: bool = True) -> Batch:
    """A completed batch whose one output line the API can serve; its results are not kept yet."""
    content = b'{"id": "r1", "custom_id": "only", "response": {"status_code": 200, "body": {}}, "error": null}\n'
    info = {"id": "file-o", "object": "file", "bytes": len(content), "created_at": 1, "filename": "o"}
    fake_api.script("GET", "/files/file-o", Reply(body={**info, "purpose": "batch_output"}))
    fake_api.script("GET", "/files/file-o/content", Reply(body=content))
    data = api.add("completed", output_file_id="file-o", error_file_id=None, input_file_id="")
    if committed:
        _committed()
    return Batch.objects.get(batch_id=data["id"])


# --- The detail panel and its results card --------------------------------------------


def test_it_keeps_polling_a_final_batch_until_its_results_card_fills_in(api, fake_api, viewer_client):
    batch = _completed_with_files_upstream(api, fake_api)
    url = reverse("batches:detail", args=[batch.batch_id])

    page = viewer_client.get(url)
    fragment = viewer_client.get(url, **HTMX)

    for html in (page.content.decode(), fragment.content.decode()):
        assert _polls(html, "batch-panel")
        assert "being fetched to be kept locally" in html
        assert "final: this page no longer changes" not in html
    assert fragment.status_code == 200
    key = _shown_key(page.content.decode(), "batch-panel")
    assert _shown_key(fragment.content.decode(), "batch-panel") == key
    assert _poll(viewer_client, url, key).status_code == 204  # the card is still being fetched: nothing new

    assert keep_results(batch.batch_id) == ArchiveState.READY
    filled = _poll(viewer_client, url, key)

    assert filled.status_code == STOP_POLLING
    html = filled.content.decode()
    assert not _polls(html, "batch-panel") and "final: this page no longer changes" in html
    assert "being fetched" not in html and 'class="outcome outcome-succeeded">succeeded <strong>1</strong>' in html
    full = viewer_client.get(url).content.decode()
    assert not _polls(full, "batch-panel") and "outcome-succeeded" in full


def test_it_waits_for_results_the_background_work_has_not_asked_for_yet(api, fake_api, viewer_client, settings):
    # Final a moment ago: the recording's commit has not asked for the archive yet, but will (BATCHBOARD_ARCHIVE=all).
    settings.BATCHBOARD_ARCHIVE = "all"
    batch = _completed_with_files_upstream(api, fake_api, committed=False)
    assert not ResultArchive.objects.filter(batch=batch).exists()
    url = reverse("batches:detail", args=[batch.batch_id])

    fragment = viewer_client.get(url, **HTMX)

    assert fragment.status_code == 200 and _polls(fragment.content.decode(), "batch-panel")


def test_it_stops_at_once_for_a_final_batch_whose_results_are_kept(viewer_client, tmp_path):
    batch = kept_batch({"a": "ok", "b": 500}, tmp_path)
    url = reverse("batches:detail", args=[batch.batch_id])

    fragment = viewer_client.get(url, **HTMX)
    page = viewer_client.get(url)

    assert fragment.status_code == STOP_POLLING and page.status_code == 200
    for html in (fragment.content.decode(), page.content.decode()):
        assert not _polls(html, "batch-panel") and 'id="results-heading"' in html
        assert "final: this page no longer changes" in html


def test_it_stops_at_once_when_results_are_kept_only_on_open(api, fake_api, viewer_client, settings):
    settings.BATCHBOARD_ARCHIVE = "on-open"  # nobody opened them: nothing on the page waits for them
    batch = _completed_with_files_upstream(api, fake_api)

    fragment = viewer_client.get(reverse("batches:detail", args=[batch.batch_id]), **HTMX)

    assert fragment.status_code == STOP_POLLING and "Open the results" in fragment.content.decode()


def test_it_stops_once_the_results_cannot_be_fetched(api, fake_api, viewer_client):
    data = api.add("completed", output_file_id="file-gone", error_file_id=None)  # the API has no such file
    _committed()
    url = reverse("batches:detail", args=[data["id"]])
    key = _shown_key(viewer_client.get(url).content.decode(), "batch-panel")

    assert keep_results(data["id"]) == ArchiveState.UNAVAILABLE
    answer = _poll(viewer_client, url, key)

    assert answer.status_code == STOP_POLLING and "no longer has this batch" in answer.content.decode()


# --- The detail panel and its retries card --------------------------------------------


def _verified_retry(parent_id: str) -> Batch:
    """A retry of the parent whose lines were found to be the parent's (the check's verdict, stored)."""
    child = record_batch(services.ApiBatch.from_api(payload("validating", metadata={RETRY_OF_KEY: parent_id})))
    Batch.objects.filter(pk=child.pk).update(lineage_state=LineageState.VERIFIED)
    return child


def test_it_keeps_polling_until_an_automatic_retry_is_sent_and_shows_it(viewer_client, tmp_path):
    parent = kept_batch({"a": "ok", "b": 429}, tmp_path, metadata={AUTO_RETRY_KEY: "2"})
    url = reverse("batches:detail", args=[parent.batch_id])

    page = viewer_client.get(url).content.decode()
    key = _shown_key(page, "batch-panel")

    assert _polls(page, "batch-panel")  # results kept, the automatic retry not sent yet
    assert _poll(viewer_client, url, key).status_code == 204

    child = _verified_retry(parent.batch_id)  # made here: verified as it is made
    AutoRetry.objects.create(parent=parent, state=AutoRetryState.SUBMITTED, retry_batch_id=child.batch_id, lines=1)
    answer = _poll(viewer_client, url, key)

    assert answer.status_code == STOP_POLLING
    html = answer.content.decode()
    assert f'Retried by <a class="mono" href="/batches/{child.batch_id}/">' in html
    assert "Automatic retry: submitted" in html and not _polls(html, "batch-panel")


def test_it_answers_in_full_when_only_the_retries_card_changed(api, viewer_client):
    parent = api.add("in_progress")
    url = reverse("batches:detail", args=[parent["id"]])
    key = _shown_key(viewer_client.get(url).content.decode(), "batch-panel")
    assert _poll(viewer_client, url, key).status_code == 204

    claim = record_batch(services.ApiBatch.from_api(payload("validating", metadata={RETRY_OF_KEY: parent["id"]})))
    assert _poll(viewer_client, url, key).status_code == 204  # a claim not verified changes nothing on the parent
    child = _verified_retry(parent["id"])
    answer = _poll(viewer_client, url, key)

    assert answer.status_code == 200 and f"/batches/{child.batch_id}/" in answer.content.decode()
    assert claim.batch_id not in answer.content.decode()


def test_a_retrys_card_keeps_polling_while_its_claim_is_being_checked_and_then_shows_the_link(
    viewer_client, tmp_path, tasks
):
    parent = kept_batch({"a": 429, "b": 500}, tmp_path)
    kept = ResultArchive.objects.get(batch=parent)
    with StoredFiles(kept) as files:
        line = files.input_bytes(kept.lines.get(custom_id="b"))
    child = kept_batch({"b": "ok"}, tmp_path, metadata={RETRY_OF_KEY: parent.batch_id}, lines={"b": line})
    tasks.commit_callbacks()  # its check is asked for when it is recorded, and due once its results are kept
    url = reverse("batches:detail", args=[child.batch_id])

    page = viewer_client.get(url).content.decode()
    assert _polls(page, "batch-panel") and "Claims to retry" in page

    tasks.drain()
    answer = _poll(viewer_client, url, _shown_key(page, "batch-panel"))

    assert answer.status_code == STOP_POLLING
    assert f'Retry of <a class="mono" href="/batches/{parent.batch_id}/">' in answer.content.decode()


def test_it_stops_polling_a_batch_whose_automatic_retry_found_nothing_to_send(viewer_client, tmp_path):
    parent = kept_batch({"a": "ok"}, tmp_path, metadata={AUTO_RETRY_KEY: "2"})
    AutoRetry.objects.create(parent=parent, state=AutoRetryState.NOTHING)

    fragment = viewer_client.get(reverse("batches:detail", args=[parent.batch_id]), **HTMX)

    assert fragment.status_code == STOP_POLLING and "Automatic retry: nothing to retry" in fragment.content.decode()


# --- The results page ----------------------------------------------------------------


def test_the_results_page_polls_at_the_interval_the_server_chose(api, viewer_client):
    data = api.add("in_progress")
    url = reverse("results:list", args=[data["id"]])

    page = viewer_client.get(url).content.decode()
    fragment = viewer_client.get(url, **HTMX)

    for html in (page, fragment.content.decode()):
        assert 'hx-trigger="every 5s, live-refresh' in _region(html, "results-panel")
        assert _polls(html, "results-panel")  # data-live-poll: live.js pauses it while Live is off or tab hidden
    assert fragment.status_code == 200 and "<html" not in fragment.content.decode()
    assert "data-live-toggle" in page  # the Live controls
    viewer_client.cookies["batchboard_live_interval"] = "30"
    assert 'hx-trigger="every 30s,' in _region(viewer_client.get(url).content.decode(), "results-panel")


def test_the_results_page_answers_a_poll_for_what_is_shown_with_nothing(api, viewer_client):
    data = api.add("in_progress")
    url = reverse("results:list", args=[data["id"]]) + "?outcome=failed"
    key = _shown_key(viewer_client.get(url).content.decode(), "results-panel")

    same = _poll(viewer_client, url, key)
    other = _poll(viewer_client, url, "an-older-rendering")

    assert same.status_code == 204 and same.content == b""
    assert other.status_code == 200 and _shown_key(other.content.decode(), "results-panel") == key


def test_the_results_page_fills_in_and_stops_once_the_results_are_kept(api, fake_api, viewer_client):
    batch = _completed_with_files_upstream(api, fake_api)
    url = reverse("results:list", args=[batch.batch_id])
    page = viewer_client.get(url).content.decode()  # opening it asks for the results
    key = _shown_key(page, "results-panel")
    assert "Fetching the result files" in page and _poll(viewer_client, url, key).status_code == 204

    assert keep_results(batch.batch_id) == ArchiveState.READY
    answer = _poll(viewer_client, url, key)

    assert answer.status_code == STOP_POLLING and not _polls(answer.content.decode(), "results-panel")
    assert [row.custom_id for row in answer.context["page"]] == ["only"]
    full = viewer_client.get(url).content.decode()
    assert not _polls(full, "results-panel") and "data-live-toggle" not in full


def test_the_results_page_keeps_polling_until_an_automatic_retry_is_sent(viewer_client, tmp_path):
    parent = kept_batch({"a": "ok", "b": 429}, tmp_path, metadata={AUTO_RETRY_KEY: "1"})
    url = reverse("results:list", args=[parent.batch_id])
    key = _shown_key(viewer_client.get(url).content.decode(), "results-panel")

    child = _verified_retry(parent.batch_id)  # made here: verified as it is made
    AutoRetry.objects.create(parent=parent, state=AutoRetryState.SUBMITTED, retry_batch_id=child.batch_id, lines=1)
    answer = _poll(viewer_client, url, key)

    assert answer.status_code == STOP_POLLING and "Final results across 2 batches" in answer.content.decode()


def test_an_app_made_ready_twice_still_shows_its_cards_once(operator_client, tmp_path):
    for name in ("results", "retries", "audit"):
        apps.get_app_config(name).ready()  # as a second setup in one process would
    batch = kept_batch({"a": "ok", "b": 500}, tmp_path)

    html = operator_client.get(reverse("batches:detail", args=[batch.batch_id])).content.decode()

    for heading in ('id="results-heading"', 'id="lineage-heading"', 'id="activity-heading"'):
        assert html.count(heading) == 1, heading


def test_a_section_for_a_slot_no_page_has_is_refused():
    with pytest.raises(ValueError, match="no slot 'detail_footer'"):
        sections.Section(name="x", slot="detail_footer", template="x.html", context=dict, key=len)
