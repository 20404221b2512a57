"""The batch list: full page and live fragment of the same URL, filters, search, counts, paging, polling, escaping."""

import re
from datetime import datetime, time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches import sync
from batches.models import SyncState
from tests.fake_api import Reply
from tests.views.list_page import chip_count, row_of

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def _today() -> int:
    return int(timezone.make_aware(datetime.combine(timezone.localdate(), time.min)).timestamp())


def test_it_serves_the_whole_page_and_the_live_fragment_from_the_same_url(api, viewer_client):
    running = api.add("in_progress")

    page = viewer_client.get("/batches/")
    fragment = viewer_client.get("/batches/", **HTMX)

    assert page.status_code == fragment.status_code == 200
    assert "HX-Request" in page["Vary"] and "HX-Request" in fragment["Vary"]
    html, part = page.content.decode(), fragment.content.decode()
    assert html.lstrip().startswith("<!doctype html>") and 'class="filters"' in html
    assert part.lstrip().startswith('<div id="batch-table"') and "<html" not in part and 'class="filters"' not in part
    assert running["id"] in html and running["id"] in part
    # The page renders its counts and summary in place; the fragment carries them out of band.
    assert (
        'id="summary-strip"' in html and 'id="summary-strip" class="summary-strip" aria-label="Summary" hx' not in html
    )
    for part_id in ("summary-strip", "status-filter", "list-freshness"):
        assert re.search(rf'id="{part_id}"[^>]*hx-swap-oob="true"', part), part_id


def test_it_serves_the_whole_page_to_an_htmx_history_restore(api, viewer_client):
    api.add("in_progress")
    response = viewer_client.get("/batches/", HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX)
    assert response.status_code == 200
    assert "<!doctype html>" in response.content.decode()


def test_it_lists_batches_newest_first_with_their_details(api, viewer_client):
    older = api.add("completed", created_at=int(timezone.now().timestamp()) - 7200, model="gpt-4.1")
    newer = api.add("in_progress", metadata={"description": "Nightly eval"})

    html = viewer_client.get("/batches/").content.decode()

    assert html.index(newer["id"]) < html.index(older["id"])
    row = row_of(html, newer["id"])
    assert f'href="/batches/{newer["id"]}/"' in row
    assert 'data-status="in_progress"' in row and "in progress" in row
    assert "/v1/chat/completions" in row and "gpt-4o-mini-2024-07-18" in row
    assert 'aria-label="2 completed, 0 failed of 5 requests"' in row and "2 / 5" in row
    assert "1 min ago" in row and '<time datetime="' in row and 'title="' in row
    assert "in 23 h " in row  # a running batch shows when it expires
    assert "Nightly eval" in row
    assert "hours from now" not in row_of(html, older["id"])


def test_it_does_not_show_a_completed_batch_whose_requests_all_failed_as_a_success(api, viewer_client):
    batch = api.add("completed", request_counts={"total": 5, "completed": 0, "failed": 5})
    row = row_of(viewer_client.get("/batches/").content.decode(), batch["id"])
    assert "badge-completed-all-failed" in row and "all failed" in row
    assert "5 failed" in row


def test_it_filters_by_status_endpoint_and_model(api, viewer_client):
    chat = api.add("in_progress", endpoint="/v1/chat/completions", model="gpt-4.1")
    embed = api.add("in_progress", endpoint="/v1/embeddings", model="text-embedding-3-small")
    done = api.add("completed", endpoint="/v1/embeddings", model="text-embedding-3-small")

    def shown(query):
        html = viewer_client.get(f"/batches/?{query}").content.decode()
        return {b["id"] for b in (chat, embed, done) if f'id="row-{b["id"]}"' in html}

    assert shown("status=in_progress") == {chat["id"], embed["id"]}
    assert shown("status=active") == {chat["id"], embed["id"]}
    assert shown("endpoint=/v1/embeddings") == {embed["id"], done["id"]}
    assert shown("model=gpt-4.1") == {chat["id"]}
    assert shown("status=completed&endpoint=/v1/embeddings") == {done["id"]}
    assert shown("endpoint=/v1/moderations") == set()


def test_it_searches_ids_file_ids_and_metadata_case_insensitively(api, viewer_client):
    tagged = api.add("in_progress", metadata={"customer": "ACME Corp", "run": "spring"})
    other = api.add("in_progress", input_file_id="file-Unique42", metadata={"customer": "Globex"})

    def shown(q):
        html = viewer_client.get("/batches/", {"q": q}).content.decode()
        return {b["id"] for b in (tagged, other) if f'id="row-{b["id"]}"' in html}

    assert shown("acme") == {tagged["id"]}
    assert shown("acme spring") == {tagged["id"]}
    assert shown("acme globex") == set()
    assert shown("FILE-unique42") == {other["id"]}
    assert shown(other["id"].upper()) == {other["id"]}


def test_it_keeps_the_filters_in_the_form_and_offers_to_clear_them(api, viewer_client):
    api.add("in_progress", endpoint="/v1/embeddings")
    html = viewer_client.get("/batches/?endpoint=/v1/embeddings&q=nothing+like+it&status=in_progress").content.decode()
    assert "<option selected>/v1/embeddings</option>" in html
    assert 'name="q" value="nothing like it"' in html
    assert '<input type="hidden" name="status" value="in_progress">' in html
    assert "Clear filters" in html
    assert "No batches match these filters" in html


def test_it_counts_batches_per_status_over_the_other_filters(api, viewer_client):
    api.add("in_progress", endpoint="/v1/embeddings")
    api.add("in_progress", endpoint="/v1/embeddings")
    api.add("completed", endpoint="/v1/embeddings")
    api.add("in_progress", endpoint="/v1/chat/completions")

    html = viewer_client.get("/batches/?endpoint=/v1/embeddings&status=completed").content.decode()

    assert chip_count(html, "in_progress") == 2
    assert chip_count(html, "completed") == 1
    assert chip_count(html, "active") == 2
    assert chip_count(html, "failed") == 0
    # The chips keep the other filters and drop the page.
    assert 'href="?status=failed&amp;endpoint=%2Fv1%2Fembeddings"' in html


def test_it_counts_statuses_in_one_query_whatever_the_number_of_statuses(api):
    from batches.models import Batch

    for status in ("in_progress", "completed", "failed", "expired", "cancelled", "validating"):
        api.add(status)
    with CaptureQueriesContext(connection) as queries:
        counts = Batch.objects.matching().status_counts()
    assert len(queries) == 1
    assert counts == {s: 1 for s in ("in_progress", "completed", "failed", "expired", "cancelled", "validating")}


@pytest.mark.parametrize(
    ("query", "notice"),
    [
        ("status=exploded", "There is no status “exploded”; showing every status."),
        ("status=%3Cb%3Ebold%3C/b%3E", "There is no status “&lt;b&gt;bold&lt;/b&gt;”"),
        ("page=abc", "“abc” is not a page number; showing the first page."),
        ("page=0", "There is no page 0; showing the first page."),
        ("page=-3", "There is no page -3; showing the first page."),
        ("page=99999", "There is no page 99999; showing the last page (1)."),
    ],
)
def test_it_ignores_or_clamps_bad_filter_values_with_a_notice(api, viewer_client, query, notice):
    batch = api.add("in_progress")
    for headers in ({}, HTMX):
        response = viewer_client.get(f"/batches/?{query}", **headers)
        assert response.status_code == 200
        assert f'id="row-{batch["id"]}"' in response.content.decode()
    assert notice in viewer_client.get(f"/batches/?{query}").content.decode()


def test_it_pages_fifty_batches_at_a_time_and_keeps_the_filters_in_page_links(api, viewer_client):
    now = int(timezone.now().timestamp())
    batches = [api.add("completed", created_at=now - 60 * i, model="gpt-4.1") for i in range(55)]

    first = viewer_client.get("/batches/?model=gpt-4.1").content.decode()
    second = viewer_client.get("/batches/?model=gpt-4.1&page=2").content.decode()
    clamped = viewer_client.get("/batches/?model=gpt-4.1&page=7").content.decode()

    assert first.count('<tr id="row-') == 50 and second.count('<tr id="row-') == 5
    assert f'id="row-{batches[0]["id"]}"' in first and f'id="row-{batches[54]["id"]}"' in second
    assert "Batches 1\N{EN DASH}50 of 55" in first and "Batches 51\N{EN DASH}55 of 55" in second
    assert 'href="?model=gpt-4.1&amp;page=2"' in first
    assert 'rel="prev" href="?model=gpt-4.1&amp;page=1"' in second
    assert f'id="row-{batches[54]["id"]}"' in clamped and "showing the last page (2)" in clamped
    # The live fragment polls the page it shows, with the same filters.
    api.add("in_progress", model="gpt-4.1", created_at=now - 3600 * 5)
    fragment = viewer_client.get("/batches/?model=gpt-4.1&page=2", **HTMX).content.decode()
    assert 'hx-get="/batches/?model=gpt-4.1&amp;page=2"' in fragment


def test_it_polls_while_a_batch_can_still_change(api, viewer_client):
    api.add("in_progress")
    api.add("completed")

    fragment = viewer_client.get("/batches/?status=in_progress", **HTMX)
    page = viewer_client.get("/batches/?status=in_progress")

    assert fragment.status_code == 200
    for html in (fragment.content.decode(), page.content.decode()):
        root = re.search(r'<div id="batch-table"[^>]*>', html).group(0)
        assert 'hx-trigger="every 5s, live-refresh' in root and "data-live-poll" in root
        assert 'hx-get="/batches/?status=in_progress"' in root
        assert "data-live-retry" not in root


def test_it_keeps_polling_a_finished_view_while_another_batch_runs(api, viewer_client):
    # A running batch elsewhere may finish into this filtered view, and it moves the counts on screen.
    api.add("in_progress")
    api.add("completed")
    response = viewer_client.get("/batches/?status=completed", **HTMX)
    assert response.status_code == 200
    assert "data-live-poll" in response.content.decode()


def test_it_stops_polling_with_286_when_nothing_can_change(api, viewer_client, synced):
    api.add("completed")
    api.add("cancelled")

    fragment = viewer_client.get("/batches/", **HTMX)
    page = viewer_client.get("/batches/")

    assert fragment.status_code == 286
    assert page.status_code == 200
    for html in (fragment.content.decode(), page.content.decode()):
        root = re.search(r'<div id="batch-table"[^>]*>', html).group(0)
        assert "hx-trigger" not in root and "hx-get" not in root and "data-live-poll" not in root
    # The last answer still carries the final counts.
    assert 'id="status-filter"' in fragment.content.decode()


def test_it_keeps_polling_while_the_first_refresh_runs_elsewhere(api, viewer_client, settings):
    # The sync loop (or another viewer) holds the refresh lease and has not answered yet.
    settings.BATCHBOARD_REFRESH_INTERVAL = 60
    SyncState.objects.create(name="list", claimed_at=timezone.now(), heartbeat_at=timezone.now())

    response = viewer_client.get("/batches/", **HTMX)

    assert response.status_code == 200
    assert "Fetching batches from the OpenAI API for the first time" in response.content.decode()
    root = re.search(r'<div id="batch-table"[^>]*>', response.content.decode()).group(0)
    assert "data-live-poll" in root
    assert api.server.received == []  # this viewer did not walk the list itself


def test_it_does_not_call_an_unreachable_organisation_empty(api, operator_client):
    api.list_reply = Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})

    html = operator_client.get("/batches/").content.decode()

    assert "Nothing has been fetched from the OpenAI API yet." in html
    assert "No batches yet" not in html


def test_it_keeps_polling_with_a_backoff_while_the_api_is_failing(api, viewer_client):
    api.add("completed")
    api.list_reply = Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})
    sync.run_pass(force=True)

    response = viewer_client.get("/batches/", **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    root = re.search(r'<div id="batch-table"[^>]*>', html).group(0)
    assert "data-live-poll" in root and re.search(r'data-live-retry="\d+"', root)
    assert "Cannot reach the OpenAI API" in html  # the out-of-band freshness notice
    assert api.batches and f'id="row-{next(iter(api.batches))}"' in html  # the cached rows still show


def test_it_shows_the_summary_figures(api, viewer_client):
    today = _today()
    counts = {"total": 100, "completed": 20, "failed": 5}
    api.add("in_progress", request_counts=counts, created_at=today + 1)
    api.add("finalizing", request_counts={"total": 10, "completed": 9, "failed": 1}, created_at=today + 1)
    api.add("completed", request_counts={"total": 10, "completed": 7, "failed": 3}, created_at=today + 1)
    api.add("failed", created_at=today + 1)
    api.add("expired", request_counts={"total": 10, "completed": 1, "failed": 0}, created_at=today + 1)
    api.add("expired", created_at=today - 7200)  # finished yesterday

    html = viewer_client.get("/batches/").content.decode()
    strip = re.search(r'<section id="summary-strip".*?</section>', html, re.S).group(0)
    figures = dict(
        re.findall(r"<dt>(?:<a[^>]*>)?([^<]+)(?:</a>)?</dt>\s*<dd class=\"figure-value\">([\d,]+)</dd>", strip)
    )

    assert figures == {"Running": "2", "Requests in flight": "75", "Finished today": "3", "Failed today": "2"}
    assert "3 failed requests in batches finished today" in strip


def test_it_shows_hostile_metadata_as_text(api, viewer_client):
    batch = api.add(
        "in_progress",
        metadata={"description": "<script>alert('x')</script>", "note": '"><img src=x onerror=alert(1)>'},
    )
    html = viewer_client.get("/batches/").content.decode()
    row = row_of(html, batch["id"])
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in row
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in row  # in the title attribute


def test_it_shows_cancel_controls_only_to_users_who_may_cancel(api, client, viewer, operator):
    running = api.add("in_progress")
    finished = api.add("completed")

    client.force_login(viewer)
    html = client.get("/batches/").content.decode()
    assert "data-select" not in html and "/cancel/" not in row_of(html, running["id"])
    assert "Cancel selected" not in html

    client.force_login(operator)
    html = client.get("/batches/").content.decode()
    row = row_of(html, running["id"])
    assert f'hx-post="/batches/{running["id"]}/cancel/"' in row and 'name="batch_id"' in row
    assert f'href="/batches/{running["id"]}/cancel/?next=%2Fbatches%2F"' in row
    assert "/cancel/" not in row_of(html, finished["id"]) and "data-select" not in row_of(html, finished["id"])
    assert "Cancel selected" in html


@pytest.mark.parametrize("headers", [{}, HTMX], ids=["page", "fragment"])
def test_it_runs_as_many_queries_for_sixty_batches_as_for_three(api, viewer_client, headers):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            response = viewer_client.get("/batches/?q=test", **headers)
        assert response.status_code == 200
        return len(captured)

    for status in ("in_progress", "completed", "validating"):
        api.add(status, metadata={"description": "test run"})
    viewer_client.get("/batches/")
    few = queries()
    for i in range(57):
        api.add(("in_progress", "completed", "failed", "cancelling")[i % 4], metadata={"description": "test run"})
    viewer_client.get("/batches/")
    many = queries()

    assert few == many


def test_it_words_an_empty_filtered_list_plainly(api, viewer_client):
    api.add("in_progress")
    html = viewer_client.get("/batches/?q=nothing-matches-this").content.decode()
    assert "No batch matches these filters" in html
    assert "newest first" not in html
