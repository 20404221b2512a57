"""The list's summary and filters as URLs: red only for real failures, "needs attention", metadata pairs, sorting,
a created-date range, and no bulk cancel where nothing can be cancelled."""

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from batches.models import Batch
from tests.views.list_page import chip_count

pytestmark = pytest.mark.django_db


def _ids(html: str) -> list[str]:
    return re.findall(r'<tr id="row-([^"]+)"', html)


def _failed_figure(html: str) -> str:
    return re.search(r'<div class="figure[^"]*">\s*<dt><a id="summary-failed"', html).group(0)


def test_it_shows_failures_in_red_only_when_a_batch_failed_today(api, viewer_client):
    api.add("completed", request_counts={"total": 10, "completed": 7, "failed": 3}, completed_at=int(time.time()))
    html = viewer_client.get("/batches/").content.decode()
    assert "figure-bad" not in _failed_figure(html)  # failed requests alone are no alarm: the figure counts batches
    assert re.search(r'summary-failed"[^>]*>Failed today</a></dt>\s*<dd class="figure-value">0</dd>', html)

    api.add("failed", failed_at=int(time.time()))
    html = viewer_client.get("/batches/").content.decode()
    assert "figure-bad" in _failed_figure(html)


def test_it_lists_what_needs_attention_with_its_count(api, viewer_client):
    now = int(time.time())
    wanted = [
        api.add("failed"),
        api.add("expired"),
        api.add("completed", request_counts={"total": 20, "completed": 0, "failed": 20}),  # every request failed
        api.add("validating", created_at=now - 3600),  # validating for an hour
        api.add("in_progress", request_counts={"total": 20, "completed": 3, "failed": 2}),
        # Stuck and with a failed request: counted once.
        api.add("validating", created_at=now - 3600, request_counts={"total": 5, "completed": 0, "failed": 1}),
    ]
    wanted.append(api.add("in_progress", expires_at=now + 3600))  # less than 3 hours of its window left
    fine = [
        api.add("in_progress", request_counts={"total": 20, "completed": 3, "failed": 0}),
        api.add("completed", request_counts={"total": 20, "completed": 20, "failed": 0}),
        api.add("validating", created_at=now - 60),
        api.add("in_progress", expires_at=now + 10 * 3600),
        # One failed line in a thousand is no alarm (5 % is the default share); 50 in a thousand is not above it.
        api.add("completed", request_counts={"total": 1000, "completed": 999, "failed": 1}),
        api.add("completed", request_counts={"total": 1000, "completed": 950, "failed": 50}),
        api.add("cancelled", expires_at=now + 60),  # a final batch does not expire
    ]
    stuck_finalizing = api.add("finalizing", request_counts={"total": 5, "completed": 5, "failed": 0})
    Batch.objects.filter(batch_id=stuck_finalizing["id"]).update(last_changed_at=datetime.now(UTC) - timedelta(hours=2))
    wanted.append(stuck_finalizing)

    html = viewer_client.get("/batches/").content.decode()
    assert chip_count(html, "attention") == len(wanted)
    assert "needs attention" in html

    shown = _ids(viewer_client.get("/batches/?status=attention").content.decode())
    assert sorted(shown) == sorted(b["id"] for b in wanted)
    assert not set(shown) & {b["id"] for b in fine}


def test_it_follows_the_failure_share_setting(api, viewer_client, settings):
    batch = api.add("completed", request_counts={"total": 1000, "completed": 990, "failed": 10})
    assert _ids(viewer_client.get("/batches/?status=attention").content.decode()) == []
    settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT = 0.5
    assert _ids(viewer_client.get("/batches/?status=attention").content.decode()) == [batch["id"]]


def test_it_lists_every_batch_with_failed_lines_separately(api, viewer_client):
    with_failures = [
        api.add("completed", request_counts={"total": 1000, "completed": 999, "failed": 1}),
        api.add("in_progress", request_counts={"total": 20, "completed": 3, "failed": 2}),
        api.add("failed", request_counts={"total": 5, "completed": 0, "failed": 5}),
    ]
    api.add("completed", request_counts={"total": 20, "completed": 20, "failed": 0})
    api.add("failed")  # failed validation: no request ran, so no failed line

    html = viewer_client.get("/batches/").content.decode()
    assert chip_count(html, "failed-lines") == len(with_failures)
    assert "has failed lines" in html
    shown = _ids(viewer_client.get("/batches/?status=failed-lines").content.decode())
    assert sorted(shown) == sorted(b["id"] for b in with_failures)
    assert chip_count(viewer_client.get("/batches/?status=failed-lines&q=nothing-matches").content.decode(), "all") == 0


def test_the_summary_strip_says_that_filters_do_not_apply_to_it(api, viewer_client):
    api.add("in_progress", metadata={"team": "research"})
    api.add("in_progress", metadata={"team": "ops"})
    plain = viewer_client.get("/batches/").content.decode()
    assert 'id="summary-scope"' not in plain
    filtered = viewer_client.get("/batches/?q=team:research").content.decode()
    assert "These figures cover every batch" in filtered
    assert re.search(r'id="summary-running"[^>]*>Running</a></dt>\s*<dd class="figure-value">2</dd>', filtered)
    fragment = viewer_client.get("/batches/?q=team:research", HTTP_HX_REQUEST="true").content.decode()
    assert "These figures cover every batch" in fragment or 'id="summary-strip"' not in fragment


def test_it_hides_bulk_cancel_where_nothing_can_be_cancelled(api, operator_client):
    api.add("completed")
    assert "Cancel selected" not in operator_client.get("/batches/").content.decode()

    api.add("in_progress")
    assert "Cancel selected" in operator_client.get("/batches/").content.decode()
    html = operator_client.get("/batches/?status=completed").content.decode()
    assert "Cancel selected" not in html and "Select batches with the checkboxes" not in html


def test_it_finds_a_metadata_pair_and_shows_it_in_the_row(api, viewer_client):
    research = api.add("in_progress", metadata={"description": "Eval", "team": "Research"})
    api.add("in_progress", metadata={"team": "research-lab"})
    api.add("in_progress", metadata={"owner": "research"})

    html = viewer_client.get("/batches/?q=team:research").content.decode()

    assert _ids(html) == [research["id"]]
    row = re.search(rf'<tr id="row-{research["id"]}".*?</tr>', html, re.S).group(0)
    assert re.search(r'<span class="meta-match">.*team: Research</span>', row)
    assert "<code>key:value</code> matches one metadata pair" in html  # the hint under the search box


def test_it_sorts_by_a_column_kept_in_the_url(api, viewer_client):
    now = int(time.time())
    low = api.add("in_progress", request_counts={"total": 10, "completed": 1, "failed": 0}, created_at=now - 300)
    high = api.add("in_progress", request_counts={"total": 10, "completed": 9, "failed": 0}, created_at=now - 200)
    done = api.add("completed", request_counts={"total": 10, "completed": 10, "failed": 0}, created_at=now - 100)

    assert _ids(viewer_client.get("/batches/").content.decode()) == [done["id"], high["id"], low["id"]]
    assert _ids(viewer_client.get("/batches/?sort=created").content.decode()) == [low["id"], high["id"], done["id"]]
    by_progress = viewer_client.get("/batches/?sort=-progress").content.decode()
    assert _ids(by_progress) == [done["id"], high["id"], low["id"]]
    assert re.search(
        r'aria-sort="descending"><a class="sort-link" id="sort-progress" href="\?sort=progress"', by_progress
    )
    assert "most processed first" in by_progress
    assert _ids(viewer_client.get("/batches/?sort=status").content.decode())[-1] == done["id"]
    assert _ids(viewer_client.get("/batches/?sort=expires").content.decode())[-1] == done["id"]  # finished: last

    filtered = viewer_client.get("/batches/?sort=status&q=batch").content.decode()
    chip = re.search(r'id="status-chip-active" href="([^"]+)"', filtered).group(1)
    assert "sort=status" in chip and "q=batch" in chip  # the chips keep the order and the search
    bad = viewer_client.get("/batches/?sort=colour").content.decode()
    assert "cannot sort by “colour”" in bad and _ids(bad)[0] == done["id"]


def test_it_filters_by_a_created_date_range(api, viewer_client):
    day = 86_400
    old = api.add("completed", created_at=1_700_000_000)  # 2023-11-14
    new = api.add("completed", created_at=1_700_000_000 + 3 * day)  # 2023-11-17

    assert _ids(viewer_client.get("/batches/?created_from=2023-11-15").content.decode()) == [new["id"]]
    assert _ids(viewer_client.get("/batches/?created_to=2023-11-14").content.decode()) == [old["id"]]
    both = viewer_client.get("/batches/?created_from=2023-11-14&created_to=2023-11-17").content.decode()
    assert sorted(_ids(both)) == sorted([old["id"], new["id"]])
    bad = viewer_client.get("/batches/?created_from=yesterday").content.decode()
    assert "“yesterday” is not a date" in bad and len(_ids(bad)) == 2


def test_it_applies_the_menus_on_change_and_keeps_apply_for_no_javascript(api, viewer_client):
    api.add("in_progress")
    html = viewer_client.get("/batches/").content.decode()
    assert re.search(r'<select id="filter-endpoint" name="endpoint" data-submit-on-change>', html)
    assert re.search(r'<select id="filter-model" name="model" data-submit-on-change>', html)
    assert '<button type="submit">Apply</button>' in html
