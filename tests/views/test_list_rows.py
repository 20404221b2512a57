"""The list's rows are rendered once per change of what they show (batchboard.list_rows) and the counts of final
batches are kept until one changes (listing._status_counts_of): a poll after a change shows it, and no viewer ever
gets a row or a count rendered for another."""

import re

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from batches import services
from batches.models import Batch, record_batch

pytestmark = pytest.mark.django_db

POLL = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def _shared_renderings(settings, synced):
    settings.BATCHBOARD_REFRESH_INTERVAL = 60.0
    cache.clear()
    yield
    cache.clear()


def _row(html: str, batch_id: str) -> str:
    match = re.search(rf'<tr id="row-{batch_id}".*?</tr>', html, re.S)
    assert match, f"no row for {batch_id}"
    return match.group(0)


def _count(html: str, status: str) -> int:
    match = re.search(rf'id="status-chip-{status}"[^>]*>[^<]*<span class="count">([\d,]+)</span>', html)
    assert match, f"no chip for {status}"
    return int(match.group(1).replace(",", ""))


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _record(data: dict, **fields) -> None:
    data.update(fields)
    record_batch(services.ApiBatch.from_api(data))


def _finish(data: dict) -> None:
    done = data["created_at"] + 50
    counts = {"total": data["request_counts"]["total"], "completed": data["request_counts"]["total"], "failed": 0}
    _record(data, status="completed", finalizing_at=done, completed_at=done, request_counts=counts)


def test_it_shows_a_batch_that_finished_in_the_very_next_poll_with_its_counts(api, viewer_client):
    running, other = api.add("in_progress"), api.add("in_progress")
    api.add("completed")
    html = viewer_client.get("/batches/", headers=POLL).text
    assert 'data-live-state="in_progress"' in _row(html, running["id"])
    assert (_count(html, "in_progress"), _count(html, "completed")) == (2, 1)

    _finish(running)

    html = viewer_client.get("/batches/", headers=POLL).text
    row = _row(html, running["id"])
    assert 'data-live-state="completed"' in row and 'class="is-final"' in row
    assert 'data-live-state="in_progress"' in _row(html, other["id"])
    assert (_count(html, "in_progress"), _count(html, "completed")) == (1, 2)


def test_it_counts_a_running_batch_that_moved_on_without_counting_the_final_ones_again(api, viewer_client):
    running = api.add("in_progress")
    api.add("completed")
    viewer_client.get("/batches/", headers=POLL)  # keeps the counts of the final batches

    _record(running, status="finalizing", finalizing_at=running["created_at"] + 40)
    with CaptureQueriesContext(connection) as queries:
        html = viewer_client.get("/batches/", headers=POLL).text

    assert 'data-live-state="finalizing"' in _row(html, running["id"])
    assert (_count(html, "in_progress"), _count(html, "finalizing"), _count(html, "completed")) == (0, 1, 1)
    # The running batches were counted, the final ones not: no GROUP BY without the is_terminal filter.
    grouped = [q["sql"] for q in queries.captured_queries if "GROUP BY" in q["sql"] and '"status"' in q["sql"]]
    assert grouped and all('"is_terminal"' in sql for sql in grouped)


def test_it_counts_a_final_batch_recorded_as_running_again(api, viewer_client):
    """A hostile or confused API can report a final batch as running again: it leaves the final counts."""
    batch = api.add("completed")
    api.add("completed")
    assert _count(viewer_client.get("/batches/", headers=POLL).text, "completed") == 2

    # More timestamps than before, so the recording takes it as newer.
    _record(batch, status="in_progress", cancelling_at=batch["created_at"] + 55)

    html = viewer_client.get("/batches/", headers=POLL).text
    assert (_count(html, "completed"), _count(html, "in_progress")) == (1, 1)
    assert Batch.objects.get(batch_id=batch["id"]).status == "in_progress"


def test_it_never_shows_a_viewer_the_cancel_controls_rendered_for_an_operator(api, operator_client, viewer):
    batch = api.add("in_progress")

    as_operator = _row(operator_client.get("/batches/").text, batch["id"])
    as_viewer = _row(_client(viewer).get("/batches/").text, batch["id"])
    again_as_operator = _row(operator_client.get("/batches/").text, batch["id"])

    assert f'hx-post="/batches/{batch["id"]}/cancel/"' in as_operator and "data-select" in as_operator
    assert "/cancel/" not in as_viewer and "data-select" not in as_viewer
    assert again_as_operator == as_operator


def test_it_never_shows_a_viewer_the_times_rendered_for_another_zone(api, viewer_client, django_user_model):
    batch = api.add("in_progress", created_at=1_700_000_000)
    other = _client(django_user_model.objects.create_user("utc-viewer", password="pw-utc-viewer"))
    assert "2023-11-14 22:13:20 UTC" in _row(other.get("/batches/").text, batch["id"])

    viewer_client.post("/batches/time-zone/", {"time_zone": "Asia/Tokyo"})
    in_tokyo = _row(viewer_client.get("/batches/").text, batch["id"])
    in_utc = _row(other.get("/batches/").text, batch["id"])

    assert "2023-11-15 07:13:20 JST" in in_tokyo and "UTC" not in in_tokyo
    assert "2023-11-14 22:13:20 UTC" in in_utc and "JST" not in in_utc


def test_it_shows_a_cancel_claim_in_the_row_at_the_next_poll(api, operator_client):
    batch = api.add("in_progress")
    assert "cancel requested" not in _row(operator_client.get("/batches/", headers=POLL).text, batch["id"])

    Batch.objects.filter(batch_id=batch["id"]).update(cancel_requested_at=Batch.objects.get().last_seen_at)

    row = _row(operator_client.get("/batches/", headers=POLL).text, batch["id"])
    assert "cancel requested" in row and "/cancel/" not in row


def test_it_runs_as_many_queries_for_a_poll_after_a_change_over_sixty_batches_as_over_three(api, viewer_client):
    def queries_after_a_change(data: dict) -> int:
        viewer_client.get("/batches/", headers=POLL)
        counts = data["request_counts"]
        _record(data, request_counts={**counts, "completed": counts["completed"] + 1})
        with CaptureQueriesContext(connection) as captured:
            response = viewer_client.get("/batches/", headers=POLL)
        assert response.status_code == 200
        return len(captured)

    changing = api.add("in_progress")
    for status in ("completed", "failed"):
        api.add(status)
    few = queries_after_a_change(changing)
    for i in range(57):
        api.add(("in_progress", "completed", "failed", "cancelling")[i % 4])
    many = queries_after_a_change(changing)

    assert few == many
