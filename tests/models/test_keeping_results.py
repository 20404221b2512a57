"""What is kept, by default and in each BATCHBOARD_ARCHIVE mode, whatever path recorded the batch; the disk quota;
and the results page's first open."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from batches import reactions
from batches.models import Reaction, record_batch, record_batches
from results import archive
from results.models import ArchiveState, ResultArchive
from tests.conftest import completed, kept_batch, observation

pytestmark = pytest.mark.django_db


def _kept_ids() -> set[str]:
    return set(ResultArchive.objects.values_list("batch__batch_id", flat=True))


def _keep_reactions() -> set[str]:
    return set(Reaction.objects.filter(step=archive.KEEP_STEP).values_list("batch__batch_id", flat=True))


def test_by_default_it_keeps_batches_that_finish_after_the_install_but_not_the_imported_history(tasks, settings):
    assert settings.BATCHBOARD_ARCHIVE == "new"
    record_batches([completed("batch_old_1"), completed("batch_old_2")], historical=True)  # the history import
    record_batches([observation("batch_running"), completed("batch_new_bulk"), completed("batch_new_page")])
    record_batch(completed("batch_running"))  # turns final later (a page's retrieve, a cancel's answer...)
    tasks.commit_callbacks()

    expected = {"batch_new_bulk", "batch_new_page", "batch_running"}
    assert _kept_ids() == expected
    assert _keep_reactions() == expected
    assert tasks.waiting() == 3  # one task per batch


def test_all_keeps_the_history_too_and_on_open_and_off_keep_nothing_by_themselves(tasks, settings):
    settings.BATCHBOARD_ARCHIVE = "all"
    record_batches([completed("batch_old_1"), completed("batch_old_2")], historical=True)
    tasks.commit_callbacks()
    assert _kept_ids() == {"batch_old_1", "batch_old_2"}

    for mode in ("on-open", "off"):
        settings.BATCHBOARD_ARCHIVE = mode
        record_batch(completed(f"batch_{mode}"))
        tasks.commit_callbacks()
        assert f"batch_{mode}" not in _kept_ids()


def test_a_batch_without_result_files_has_nothing_to_keep(tasks):
    record_batch(observation("batch_failed", "failed", failed_at=1_760_000_060))
    tasks.commit_callbacks()
    assert not ResultArchive.objects.exists() and not Reaction.objects.exists()


@pytest.mark.parametrize("mode", ["new", "on-open"])
def test_opening_the_results_page_of_an_old_batch_keeps_it_ahead_of_the_queue(tasks, settings, viewer_client, mode):
    settings.BATCHBOARD_ARCHIVE = mode
    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    record_batches([completed("batch_old")], historical=True)
    tasks.commit_callbacks()
    assert not ResultArchive.objects.exists()

    viewer_client.get(reverse("results:list", args=["batch_old"]))
    tasks.commit_callbacks()

    kept = ResultArchive.objects.get()
    assert kept.wanted and kept.last_opened_at is not None
    assert _keep_reactions() == {"batch_old"}
    assert DBTaskResult.objects.get().priority == reactions.HURRY_PRIORITY


def test_opening_a_page_whose_results_wait_in_the_queue_hurries_them_once(tasks, settings, viewer_client):
    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    record_batch(completed("batch_new"))
    tasks.commit_callbacks()
    assert list(DBTaskResult.objects.values_list("priority", flat=True)) == [0]

    for _viewer in range(3):
        viewer_client.get(reverse("results:list", args=["batch_new"]))
    tasks.commit_callbacks()

    assert sorted(DBTaskResult.objects.values_list("priority", flat=True)) == [0, reactions.HURRY_PRIORITY]


def test_off_keeps_nothing_even_when_the_page_is_opened(tasks, settings, viewer_client):
    settings.BATCHBOARD_ARCHIVE = "off"
    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    record_batch(completed("batch_done"))

    page = viewer_client.get(reverse("results:list", args=["batch_done"]))
    tasks.commit_callbacks()

    assert page.status_code == 200 and "BATCHBOARD_ARCHIVE=off" in page.content.decode()
    assert not ResultArchive.objects.exists() and tasks.waiting() == 0


def test_a_visit_is_noted_at_most_once_a_minute(tmp_path, django_assert_num_queries):
    kept = ResultArchive.objects.get(batch=kept_batch({"a": "ok"}, tmp_path))
    archive.request_archive(kept.batch)
    noted = ResultArchive.objects.get(pk=kept.pk).last_opened_at
    assert noted is not None

    with django_assert_num_queries(1):  # the archive's row, and no write
        archive.request_archive(kept.batch)
    assert ResultArchive.objects.get(pk=kept.pk).last_opened_at == noted

    ResultArchive.objects.filter(pk=kept.pk).update(last_opened_at=noted - timedelta(minutes=2))
    archive.request_archive(kept.batch)
    assert ResultArchive.objects.get(pk=kept.pk).last_opened_at > noted


def test_the_quota_evicts_the_files_opened_least_recently_and_keeps_summaries_and_index(
    tmp_path, settings, viewer_client
):
    batches = [kept_batch({f"{n}-a": "ok", f"{n}-b": 500}, tmp_path) for n in range(4)]
    kept = {batch.batch_id: ResultArchive.objects.get(batch=batch) for batch in batches}
    sizes = {batch_id: archive_row.stored_bytes for batch_id, archive_row in kept.items()}
    now = timezone.now()
    opened = {batches[0].batch_id: now - timedelta(days=1), batches[2].batch_id: now - timedelta(days=3)}
    for batch_id, at in opened.items():
        ResultArchive.objects.filter(pk=kept[batch_id].pk).update(last_opened_at=at)
    # Room for two of the four: the one never opened goes first, then the one opened three days ago.
    settings.BATCHBOARD_ARCHIVE_MAX_GB = (sizes[batches[0].batch_id] + sizes[batches[3].batch_id]) / 1e9
    newest = batches[3]

    assert archive.evict_over_quota(keep_pk=kept[newest.batch_id].pk) == 2

    evicted = {row.batch.batch_id for row in ResultArchive.objects.filter(evicted_at__isnull=False)}
    assert evicted == {batches[1].batch_id, batches[2].batch_id}
    for batch_id in evicted:
        row = ResultArchive.objects.get(batch__batch_id=batch_id)
        assert row.state == ArchiveState.READY and row.stored_names == {} and row.stored_bytes == 0
        assert row.lines.count() == 2 and row.summary["outcomes"] == {"succeeded": 1, "failed": 1}
        assert not any(archive.results_storage().exists(name) for name in kept[batch_id].stored_names.values())
    assert archive.evict_over_quota() == 0  # within the quota now
    page = viewer_client.get(reverse("results:list", args=[batches[1].batch_id]))
    assert "evicted" in page.content.decode() and len(page.context["page"]) == 2


def test_archive_results_asks_for_final_batches_not_kept_yet_and_can_fetch_them_in_place(tasks, settings, api):
    settings.BATCHBOARD_ARCHIVE = "on-open"
    data = api.add("completed", output_file_id="file-gone")  # the API answers 404 for its file
    out = io.StringIO()

    call_command("archive_results", "--limit", "5", stdout=out)

    assert "Asked for the results of 1 batch;" in out.getvalue()
    kept = ResultArchive.objects.get()
    assert kept.is_pending and _keep_reactions() == {data["id"]}

    call_command("archive_results", "--run", stdout=out)

    kept.refresh_from_db()
    assert kept.state == ArchiveState.UNAVAILABLE and "no longer has this batch's result files" in kept.problem
    assert Reaction.objects.get().state == "done"
    assert "fetched 1 here" in out.getvalue()


def test_opening_kept_results_asks_once_a_day_whether_the_api_still_has_the_files(
    tasks, tmp_path, fake_api, viewer_client
):
    batch = kept_batch({"a": "ok"}, tmp_path)
    ResultArchive.objects.filter(batch=batch).update(output_file_id="file-deleted")  # the API answers 404 for it
    url = reverse("results:list", args=[batch.batch_id])

    for _viewer in range(3):
        assert "deleted upstream" not in viewer_client.get(url).content.decode()  # pages never ask the API
    assert len(fake_api.received) == 0
    tasks.drain()

    assert [request.path for request in fake_api.received] == ["/files/file-deleted"]  # one check, for every viewer
    assert Reaction.objects.get(step=archive.CHECK_STEP).state == "done"
    assert "deleted upstream" in viewer_client.get(url).content.decode()
