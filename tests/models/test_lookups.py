"""What pages may ask the API for: unknown ids cost one call per few minutes, each user has a limit, viewers of one
running batch share one refresh, and the list says when nothing keeps it current."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from batches import budget, lookups
from batches.freshness import LIST_STATE
from batches.models import Connection, SyncState
from tests.fake_api import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    """An empty cache, and a clock held in the middle of one minute (per-minute limits never roll over mid-test)."""
    monkeypatch.setattr(budget, "clock", lambda: 1_000_000 * 60.0 + 30)
    cache.clear()
    yield
    cache.clear()


def _calls_to(api, path):
    return [r for r in api.server.received if r.path == path]


def test_an_unknown_batch_id_costs_one_upstream_call_however_often_it_is_asked_for(api, viewer_client):
    for _ in range(5):
        assert viewer_client.get("/batches/batch_nosuch123/").status_code == 404

    assert len(_calls_to(api, "/batches/batch_nosuch123")) == 1
    assert not SyncState.objects.exclude(name=LIST_STATE).exists()  # no state row for an id never fetched


def test_an_unknown_id_is_asked_again_after_a_few_minutes(api, viewer_client):
    viewer_client.get("/batches/batch_nosuch123/")
    # what expiry after NOT_FOUND_SECONDS does
    cache.delete(f"batchboard:not-found:batch:{Connection.objects.default().pk}:batch_nosuch123")

    viewer_client.get("/batches/batch_nosuch123/")

    assert len(_calls_to(api, "/batches/batch_nosuch123")) == 2


def test_an_unknown_file_id_costs_one_upstream_call_for_downloads_and_sizes(api, viewer_client):
    batch = api.add("completed", output_file_id="file-gone1")
    api.server.script("GET", "/files/file-gone1/content", Reply(404, {"error": {"message": "No such File object"}}))

    for _ in range(3):
        assert viewer_client.get(f"/batches/{batch['id']}/files/output/").status_code == 404
        assert viewer_client.get(f"/batches/{batch['id']}/").status_code == 200

    assert len(_calls_to(api, "/files/file-gone1/content")) == 1
    assert len(_calls_to(api, "/files/file-gone1")) == 0  # known missing: its size is not asked for either


def test_a_user_over_their_limit_gets_the_cache_and_no_upstream_call(api, viewer_client, settings):
    settings.BATCHBOARD_USER_UPSTREAM_PER_MINUTE = 3
    ids = [api.add("in_progress")["id"] for _ in range(5)]

    responses = [viewer_client.get(f"/batches/{batch_id}/") for batch_id in ids]

    assert [r.status_code for r in responses] == [200] * 5
    assert len(api.server.received) == 3  # retrieves and file-size lookups alike count against the limit
    assert "Try again in a minute" in responses[-1].text
    unknown = viewer_client.get("/batches/batch_unknown999/")
    assert unknown.status_code == 503 and not _calls_to(api, "/batches/batch_unknown999")


def test_a_user_over_their_limit_cannot_download(api, viewer_client, settings):
    settings.BATCHBOARD_USER_UPSTREAM_PER_MINUTE = 1
    batch = api.add("completed", output_file_id="file-out1", input_file_id="file-in1")
    api.server.script("GET", "/files/file-out1/content", Reply(body=b"{}\n"))
    api.server.script("GET", "/files/file-in1/content", Reply(body=b"{}\n"))
    assert viewer_client.get(f"/batches/{batch['id']}/files/output/").status_code == 200

    response = viewer_client.get(f"/batches/{batch['id']}/files/input/")

    assert response.status_code == 429
    assert "Try again in a minute" in response.text
    assert not _calls_to(api, "/files/file-in1/content")


def test_viewers_of_one_running_batch_share_one_refresh_per_interval(api, settings, django_user_model, client):
    settings.BATCHBOARD_REFRESH_INTERVAL = 60.0
    batch = api.add("in_progress")
    # Seen a while ago, so it is due for a refresh.
    from batches.models import Batch

    Batch.objects.filter(batch_id=batch["id"]).update(last_seen_at=timezone.now() - timedelta(minutes=5))

    for _ in range(5):
        row, freshness = lookups.refresh_batch(batch["id"])
        assert row is not None and freshness.ok

    assert len(_calls_to(api, f"/batches/{batch['id']}")) == 1


def test_the_list_says_when_the_sync_loop_has_not_run_lately(viewer_client):
    now = timezone.now()
    SyncState.objects.create(
        name=LIST_STATE, succeeded_at=now - timedelta(minutes=12), heartbeat_at=now - timedelta(minutes=12)
    )

    stale = viewer_client.get("/batches/").text
    SyncState.objects.filter(name=LIST_STATE).update(heartbeat_at=now, succeeded_at=now)
    fresh = viewer_client.get("/batches/").text

    assert "Not refreshing:" in stale and "the sync worker last ran 12 min ago" in stale  # the one duration style
    assert "sync_batches --loop" in stale
    assert "Not refreshing" not in fresh


def test_the_list_shows_the_import_progress(viewer_client):
    now = timezone.now()
    SyncState.objects.create(
        name=LIST_STATE,
        succeeded_at=now,
        heartbeat_at=now,
        import_cursor="batch_x",
        imported=12_300,
        import_reached=now.replace(month=10, day=2),
    )

    html = viewer_client.get("/batches/").text

    assert "Importing history: 12,300 batches so far, back to" in html and "2 Oct" in html
