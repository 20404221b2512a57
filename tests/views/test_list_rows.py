"""The list's rows are rendered once per change of what they show (batchboard.list_rows) and the figures of final
batches (status counts, needs attention, failed lines, today's summary and spend) are kept until one changes
(batches.list_figures): a poll after a change shows it, and no viewer ever gets a row or a figure kept for another."""

import re
import time

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from batches import services
from batches.models import Batch, Connection, record_batch
from batches.templatetags.batchboard import ROW_CACHE
from tests.batch_api import payload
from tests.views.list_page import chip_count, logged_in, recorded, row_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("shared_renderings")]

POLL = {"HX-Request": "true"}


def _figure(html: str, element_id: str) -> str:
    """The value of one figure of the summary strip."""
    match = re.search(rf'id="{element_id}".*?<dd class="figure-value">([^<]*)</dd>', html, re.S)
    assert match, f"no figure {element_id}"
    return match.group(1).strip()


def _finish(data: dict) -> None:
    done = data["created_at"] + 50
    counts = {"total": data["request_counts"]["total"], "completed": data["request_counts"]["total"], "failed": 0}
    recorded(data, status="completed", finalizing_at=done, completed_at=done, request_counts=counts)


def test_it_shows_a_batch_that_finished_in_the_very_next_poll_with_its_counts(api, viewer_client):
    running, other = api.add("in_progress"), api.add("in_progress")
    api.add("completed")
    html = viewer_client.get("/batches/", headers=POLL).text
    assert 'data-live-state="in_progress"' in row_of(html, running["id"])
    assert (chip_count(html, "in_progress"), chip_count(html, "completed")) == (2, 1)

    _finish(running)

    html = viewer_client.get("/batches/", headers=POLL).text
    row = row_of(html, running["id"])
    assert 'data-live-state="completed"' in row and 'class="is-final"' in row
    assert 'data-live-state="in_progress"' in row_of(html, other["id"])
    assert (chip_count(html, "in_progress"), chip_count(html, "completed")) == (1, 2)


def test_it_counts_a_running_batch_that_moved_on_without_counting_the_final_ones_again(api, viewer_client):
    running = api.add("in_progress")
    api.add("completed")
    viewer_client.get("/batches/", headers=POLL)  # keeps the counts of the final batches

    recorded(running, status="finalizing", finalizing_at=running["created_at"] + 40)
    with CaptureQueriesContext(connection) as queries:
        html = viewer_client.get("/batches/", headers=POLL).text

    assert 'data-live-state="finalizing"' in row_of(html, running["id"])
    assert (chip_count(html, "in_progress"), chip_count(html, "finalizing"), chip_count(html, "completed")) == (0, 1, 1)
    # The running batches were counted, the final ones not: no GROUP BY without the is_terminal filter.
    grouped = [q["sql"] for q in queries.captured_queries if "GROUP BY" in q["sql"] and '"status"' in q["sql"]]
    assert grouped and all('"is_terminal"' in sql for sql in grouped)


def test_it_counts_a_final_batch_recorded_as_running_again(api, viewer_client):
    """A hostile or confused API can report a final batch as running again: it leaves the final counts."""
    batch = api.add("completed")
    api.add("completed")
    assert chip_count(viewer_client.get("/batches/", headers=POLL).text, "completed") == 2

    # More timestamps than before, so the recording takes it as newer.
    recorded(batch, status="in_progress", cancelling_at=batch["created_at"] + 55)

    html = viewer_client.get("/batches/", headers=POLL).text
    assert (chip_count(html, "completed"), chip_count(html, "in_progress")) == (1, 1)
    assert Batch.objects.get(batch_id=batch["id"]).status == "in_progress"


def test_it_never_shows_a_viewer_the_cancel_controls_rendered_for_an_operator(api, operator_client, viewer):
    batch = api.add("in_progress")

    as_operator = row_of(operator_client.get("/batches/").text, batch["id"])
    as_viewer = row_of(logged_in(viewer).get("/batches/").text, batch["id"])
    again_as_operator = row_of(operator_client.get("/batches/").text, batch["id"])

    assert f'hx-post="/batches/{batch["id"]}/cancel/"' in as_operator and "data-select" in as_operator
    assert "/cancel/" not in as_viewer and "data-select" not in as_viewer
    assert again_as_operator == as_operator


def test_it_never_shows_a_viewer_the_times_rendered_for_another_zone(api, viewer_client, django_user_model):
    batch = api.add("in_progress", created_at=1_700_000_000)
    other = logged_in(django_user_model.objects.create_user("utc-viewer", password="pw-utc-viewer"))
    assert "2023-11-14 22:13:20 UTC" in row_of(other.get("/batches/").text, batch["id"])

    viewer_client.post("/batches/time-zone/", {"time_zone": "Asia/Tokyo"})
    in_tokyo = row_of(viewer_client.get("/batches/").text, batch["id"])
    in_utc = row_of(other.get("/batches/").text, batch["id"])

    assert "2023-11-15 07:13:20 JST" in in_tokyo and "UTC" not in in_tokyo
    assert "2023-11-14 22:13:20 UTC" in in_utc and "JST" not in in_utc


def test_it_shows_a_cancel_claim_in_the_row_at_the_next_poll(api, operator_client):
    batch = api.add("in_progress")
    assert "cancel requested" not in row_of(operator_client.get("/batches/", headers=POLL).text, batch["id"])

    Batch.objects.filter(batch_id=batch["id"]).update(cancel_requested_at=Batch.objects.get().last_seen_at)

    row = row_of(operator_client.get("/batches/", headers=POLL).text, batch["id"])
    assert "cancel requested" in row and "/cancel/" not in row


def test_it_runs_as_many_queries_for_a_poll_after_a_change_over_sixty_batches_as_over_three(api, viewer_client):
    def queries_after_a_change(data: dict) -> int:
        viewer_client.get("/batches/", headers=POLL)
        counts = data["request_counts"]
        recorded(data, request_counts={**counts, "completed": counts["completed"] + 1})
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


def test_it_shows_a_batch_that_failed_in_the_next_poll_in_attention_failed_lines_and_the_summary(api, viewer_client):
    running = api.add("in_progress", request_counts={"total": 100, "completed": 10, "failed": 0})
    api.add("completed", request_counts={"total": 100, "completed": 100, "failed": 0})
    html = viewer_client.get("/batches/", headers=POLL).text  # keeps the figures of the final batches
    assert (chip_count(html, "attention"), chip_count(html, "failed-lines")) == (0, 0)
    assert (_figure(html, "summary-failed"), _figure(html, "summary-running")) == ("0", "1")

    now = int(time.time())
    recorded(running, status="failed", failed_at=now, request_counts={"total": 100, "completed": 10, "failed": 90})

    html = viewer_client.get("/batches/", headers=POLL).text
    assert (chip_count(html, "attention"), chip_count(html, "failed-lines"), chip_count(html, "failed")) == (1, 1, 1)
    assert (_figure(html, "summary-failed"), _figure(html, "summary-running")) == ("1", "0")
    assert "90 failed requests in batches finished today" in html


def test_it_counts_a_new_final_batch_that_needs_attention_at_the_next_poll(api, viewer_client, settings):
    api.add("in_progress")
    api.add("completed", request_counts={"total": 100, "completed": 100, "failed": 0})
    assert chip_count(viewer_client.get("/batches/", headers=POLL).text, "attention") == 0

    api.add("completed", request_counts={"total": 100, "completed": 80, "failed": 20})  # above the 5 % share

    html = viewer_client.get("/batches/", headers=POLL).text
    assert (chip_count(html, "attention"), chip_count(html, "failed-lines"), chip_count(html, "completed")) == (1, 1, 2)
    # No data changes: the setting alone moves the count (another URL, since the table's rendering is shared).
    settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT = 50
    assert chip_count(viewer_client.get("/batches/?sort=status", headers=POLL).text, "attention") == 0


def test_it_shows_the_spend_of_a_batch_that_finished_at_the_next_poll(api, viewer_client):
    tokens = {"input_tokens": 10**8, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 10**7}
    running = api.add("in_progress", model="gpt-4o-mini", usage={**tokens, "output_tokens_details": {}})
    api.add("completed", model="gpt-4o-mini", completed_at=int(time.time()))
    before = _figure(viewer_client.get("/batches/", headers=POLL).text, "summary-spent")

    _finish(running)

    after = _figure(viewer_client.get("/batches/", headers=POLL).text, "summary-spent")
    assert after != before and after.startswith("$")


def test_it_never_shows_a_viewer_the_figures_kept_for_a_wider_scope(api, viewer_client, django_user_model):
    private = Connection.objects.create(name="Private", slug="private")
    private.view_teams.add(Group.objects.create(name="Private team"))
    api.add("in_progress")
    api.add("completed", request_counts={"total": 10, "completed": 10, "failed": 0})
    for _ in range(3):
        hidden = services.ApiBatch.from_api(
            payload("failed", failed_at=int(time.time()), request_counts={"total": 10, "completed": 0, "failed": 10})
        )
        record_batch(hidden, connection=private)
    everyone = logged_in(django_user_model.objects.create_superuser("root", password=None))

    wide = everyone.get("/batches/", headers=POLL).text
    narrow = viewer_client.get("/batches/", headers=POLL).text

    assert (chip_count(wide, "failed"), chip_count(wide, "attention"), _figure(wide, "summary-failed")) == (3, 3, "3")
    assert (chip_count(narrow, "failed"), chip_count(narrow, "attention"), _figure(narrow, "summary-failed")) == (
        0,
        0,
        "0",
    )
    assert chip_count(narrow, "completed") == 1


def test_it_renders_again_only_the_row_that_changed_when_the_others_were_only_seen_again(api, viewer_client):
    seen, changed = api.add("in_progress"), api.add("in_progress")
    viewer_client.get("/batches/", headers=POLL)
    rendered = set(ROW_CACHE._cache)
    seen_at = Batch.objects.get(batch_id=seen["id"]).last_seen_at

    record_batch(services.ApiBatch.from_api(seen))  # the sync saw it unchanged: only its last_seen_at moves
    row = Batch.objects.get(batch_id=seen["id"])
    Batch.objects.filter(pk=row.pk).update(refresh_claimed_at=row.last_seen_at)  # and a page claimed its refresh
    recorded(changed, status="finalizing", finalizing_at=changed["created_at"] + 40)
    html = viewer_client.get("/batches/", headers=POLL).text

    assert row.last_seen_at > seen_at
    assert 'data-live-state="finalizing"' in row_of(html, changed["id"])
    assert 'data-live-state="in_progress"' in row_of(html, seen["id"])
    assert len(set(ROW_CACHE._cache) - rendered) == 1  # the changed row's new rendering only


def test_it_counts_for_each_viewer_only_the_running_batches_of_their_connections(api, viewer_client, django_user_model):
    private = Connection.objects.create(name="Private", slug="private")
    private.view_teams.add(Group.objects.create(name="Private team"))
    api.add("in_progress")
    for _ in range(2):
        hidden = services.ApiBatch.from_api(payload("in_progress", created_at=int(time.time()) - 60))
        record_batch(hidden, connection=private)
    everyone = logged_in(django_user_model.objects.create_superuser("root", password=None))

    # The figures of the running batches are computed once for this data version, by the first poll, for every scope.
    wide = everyone.get("/batches/", headers=POLL).text
    narrow = viewer_client.get("/batches/", headers=POLL).text
    private_only = everyone.get("/batches/?connection=private", headers=POLL).text

    assert (chip_count(wide, "in_progress"), _figure(wide, "summary-running")) == (3, "3")
    assert (chip_count(narrow, "in_progress"), _figure(narrow, "summary-running")) == (1, "1")
    assert chip_count(private_only, "in_progress") == 2
