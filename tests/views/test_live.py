"""Live regions over HTTP: the server picks the polling interval, answers 204 for what is already on screen, and
sends a signed-out browser's htmx request to the login page."""

import json
import re

import pytest

from batches import services, sync
from batches.models import record_batch
from tests.fake_api import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _still_clock(monkeypatch):
    """Every request of a test in the same 10-second clock step (the step is part of every answer's key)."""
    monkeypatch.setattr("batches.views.live.time.time", lambda: 1_800_000_000.0)


HTMX = {"HTTP_HX_REQUEST": "true"}


def _region(html: str, region_id: str) -> str:
    return re.search(rf'<div id="{region_id}"[^>]*>', html).group(0)


def _shown_key(html: str, region_id: str) -> str:
    return json.loads(re.search(r"hx-headers='([^']*)'", _region(html, region_id)).group(1))["X-Batchboard-Shown"]


@pytest.mark.parametrize("region_id", ["batch-table", "batch-panel"])
def test_it_answers_a_poll_for_what_is_already_shown_with_nothing(api, viewer_client, region_id):
    batch = api.add("in_progress")
    url = "/batches/" if region_id == "batch-table" else f"/batches/{batch['id']}/"
    page = viewer_client.get(url).content.decode()
    key = _shown_key(page, region_id)

    same = viewer_client.get(url, HTTP_X_BATCHBOARD_SHOWN=key, **HTMX)
    other = viewer_client.get(url, HTTP_X_BATCHBOARD_SHOWN="an-older-rendering", **HTMX)

    assert same.status_code == 204 and same.content == b""
    assert other.status_code == 200 and _shown_key(other.content.decode(), region_id) == key


def test_it_answers_again_in_full_once_the_clock_moved_on(api, viewer_client, monkeypatch):
    api.add("in_progress")
    key = _shown_key(viewer_client.get("/batches/").content.decode(), "batch-table")
    monkeypatch.setattr("batches.views.live.time.time", lambda: 1_800_000_010.0)  # "1 min ago" may now read "2 min"

    response = viewer_client.get("/batches/", HTTP_X_BATCHBOARD_SHOWN=key, **HTMX)

    assert response.status_code == 200 and _shown_key(response.content.decode(), "batch-table") != key


def test_it_answers_again_in_full_once_the_data_changed(api, viewer_client):
    batch = api.add("in_progress", request_counts={"total": 10, "completed": 1, "failed": 0})
    key = _shown_key(viewer_client.get("/batches/").content.decode(), "batch-table")
    batch["request_counts"] = {"total": 10, "completed": 5, "failed": 0}
    record_batch(services.ApiBatch.from_api(batch))

    response = viewer_client.get("/batches/", HTTP_X_BATCHBOARD_SHOWN=key, **HTMX)

    assert response.status_code == 200
    assert "5 / 10" in response.content.decode()


def test_it_polls_at_the_interval_the_viewer_chose(api, viewer_client):
    api.add("in_progress")
    assert 'hx-trigger="every 5s,' in _region(viewer_client.get("/batches/").content.decode(), "batch-table")

    viewer_client.cookies["batchboard_live_interval"] = "30"
    html = viewer_client.get("/batches/").content.decode()

    assert 'hx-trigger="every 30s,' in _region(html, "batch-table")
    assert '<option value="30" selected>' in html
    viewer_client.cookies["batchboard_live_interval"] = "7"  # not an offered interval
    assert 'hx-trigger="every 5s,' in _region(viewer_client.get("/batches/").content.decode(), "batch-table")


def test_it_renders_the_live_toggle_off_for_a_viewer_who_paused(api, viewer_client):
    api.add("in_progress")
    viewer_client.cookies["batchboard_live_paused"] = "1"
    html = viewer_client.get("/batches/").content.decode()
    assert re.search(r'<input type="checkbox" data-live-toggle>', html)


def test_it_polls_no_faster_than_the_api_is_retried_while_it_fails(api, viewer_client):
    api.add("in_progress")
    api.list_reply = Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})
    for _failure in range(4):
        sync.run_pass(force=True)
    response = viewer_client.get("/batches/", **HTMX)

    region = _region(response.content.decode(), "batch-table")
    every = int(re.search(r'hx-trigger="every (\d+)s,', region).group(1))
    assert every > 5 and f'data-live-retry="{every}"' in region


def test_it_sends_a_signed_out_browser_to_the_login_page_instead_of_swapping_it_in(api, client):
    response = client.get("/batches/", HTTP_HX_CURRENT_URL="http://testserver/batches/?status=failed", **HTMX)

    assert response.status_code == 200 and response.content == b""
    assert response["HX-Redirect"] == "/accounts/login/?next=/batches/%3Fstatus%3Dfailed"


def test_it_still_redirects_a_signed_out_page_load(client):
    response = client.get("/batches/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/batches/"
