"""The batch detail page in Chromium: shared links through login and without JavaScript, and the live panel."""

import io
import re

import pytest
from playwright.sync_api import expect

from batches import lookups, services
from results.models import ArchiveState
from tests.browser.conftest import (
    CHAT_ENDPOINT,
    chat_request,
    is_live_response,
    jsonl,
    log_in,
    network_barrier,
    speed_for,
    watch_live_requests,
)
from tests.conftest import keep_results

NOT_FINAL = re.compile(r"^(validating|in_progress|finalizing)$")


def _detail_path(batch_id):
    return f"/batches/{batch_id}/"


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_it_takes_a_shared_link_through_login_to_the_full_page(live_server, new_page, viewer, make_batch, javascript):
    batch = make_batch(speed_for(0.05))  # finished by the time the link is opened
    page = new_page(java_script_enabled=javascript)
    shared_link = f"{live_server.url}{_detail_path(batch.id)}"

    page.goto(shared_link)
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/batches/batch_"))
    log_in(page, viewer)

    expect(page).to_have_url(shared_link)
    expect(page.get_by_role("heading", level=1)).to_have_text(batch.id)
    expect(page).to_have_title(re.compile(rf"^{batch.id} · completed", re.IGNORECASE))
    panel = page.locator("#batch-panel")
    expect(panel.locator("[data-status]")).to_have_text("completed")
    expect(panel).to_contain_text("20 of 20 requests processed")
    timeline = page.get_by_role("region", name="Timeline")
    for label in ("validating", "in progress", "finalizing", "completed"):
        expect(timeline.get_by_text(label, exact=True)).to_be_visible()
    files = page.get_by_role("region", name="Files")
    expect(files.get_by_role("link", name="Download output file")).to_be_visible()
    expect(page.get_by_role("region", name="Usage")).to_be_visible()
    expect(page.get_by_role("img", name="Requests processed over time")).to_be_visible()
    expect(page.get_by_label("Link to this batch")).to_have_value(shared_link)
    # The copy button needs JavaScript; without it the link stays in the box to copy by hand.
    expect(page.get_by_role("button", name="Copy link")).to_be_visible(visible=javascript)


def test_it_shows_a_batch_advancing_in_the_timeline_and_chart_without_a_reload(
    live_server, login, viewer, make_batch, sandbox_clock
):
    batch = make_batch(speed_for(60))  # running until the test moves the sandbox clock
    page = login(viewer)
    page.goto(f"{live_server.url}{_detail_path(batch.id)}")
    page.get_by_label("Refresh every").select_option("2")
    status = page.locator("#batch-panel [data-live-state]")
    expect(status).to_have_attribute("data-live-state", NOT_FINAL)
    timeline = page.get_by_role("region", name="Timeline")
    expect(timeline.get_by_text("completed", exact=True)).to_have_count(0)
    chart_dots = page.locator(".history-chart .chart-dot-completed")
    dots_before = chart_dots.count()
    completed_line = page.locator(".history-chart .chart-line-completed")
    line_before = completed_line.get_attribute("d") if completed_line.count() else None
    page.evaluate("window.__marker = 1")
    sandbox_clock.advance(80)  # the batch finishes in the sandbox; the page learns it at its next refresh

    expect(status).to_have_attribute("data-live-state", "completed", timeout=12_000)
    expect(timeline.get_by_text("completed", exact=True)).to_be_visible()
    expect(timeline.get_by_role("row").last).to_contain_text("completed")
    assert chart_dots.count() > dots_before
    assert completed_line.get_attribute("d") != line_before
    expect(page).to_have_title(re.compile(rf"^{batch.id} · completed", re.IGNORECASE))
    assert page.evaluate("window.__marker") == 1, "the page navigated instead of updating in place"


def test_it_stops_polling_by_itself_when_the_batch_is_final(
    live_server, page, login, viewer, make_batch, sandbox_clock, settings
):
    settings.BATCHBOARD_ARCHIVE = "on-open"  # no results to wait for: the first answer after the end is the last
    batch = make_batch(speed_for(60))  # running until the test moves the sandbox clock
    path = _detail_path(batch.id)
    page.clock.install()  # the page's timers run in real time, and fast_forward skips ahead
    login(viewer)
    page.goto(f"{live_server.url}{path}")
    expect(page.locator("#batch-panel")).to_have_attribute("data-live-poll", "")
    live = watch_live_requests(page, path)
    sandbox_clock.advance(80)  # the batch finishes in the sandbox
    page.get_by_label("Refresh every").select_option("2")

    with page.expect_response(lambda r: is_live_response(path)(r) and r.status == 286, timeout=12_000):
        page.clock.fast_forward(2_000)  # the next refresh, now
    expect(page.locator("#batch-panel")).not_to_have_attribute("data-live-poll", "")
    expect(page.locator("#batch-panel")).to_contain_text("final: this page no longer changes")
    expect(page.locator("[data-live-status]")).to_have_text("Up to date: nothing here can change")
    polls = len(live)
    for _interval in range(3):
        page.clock.fast_forward(30_000)  # longer than the longest interval
    network_barrier(page, live_server.url)
    assert len(live) == polls, "the page kept polling after the server said the batch is final"


def test_it_fills_in_the_results_card_without_a_reload_once_the_results_are_kept(
    live_server, settings, login, viewer, sandbox_url, sandbox_clock
):
    settings.SANDBOX_SPEED = speed_for(60)  # running until the test moves the sandbox clock
    client = services.get_client()
    lines = jsonl([chat_request(f"line-{n}") for n in range(3)])
    uploaded = client.upload_fileobj(io.BytesIO(lines), filename="input.jsonl")
    batch_id = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT).id
    lookups.refresh_batch(batch_id)  # recorded; no sync loop runs, so nothing else keeps its results
    path = _detail_path(batch_id)
    page = login(viewer)
    page.goto(f"{live_server.url}{path}")
    page.get_by_label("Refresh every").select_option("2")
    panel = page.locator("#batch-panel")
    card = page.locator(".results-card")
    page.evaluate("window.__marker = 1")

    sandbox_clock.advance(80)  # the batch finishes in the sandbox; the panel's next refresh learns it

    expect(panel.locator("[data-live-state]")).to_have_attribute("data-live-state", "completed", timeout=12_000)
    expect(card).to_contain_text("being fetched to be kept locally")
    expect(panel).to_have_attribute("data-live-poll", "")  # final, but the card can still change
    with page.expect_response(lambda r: is_live_response(path)(r) and r.status == 204, timeout=12_000):
        pass  # and while it cannot yet, the refreshes come back empty

    assert keep_results(batch_id) == ArchiveState.READY

    expect(card.locator(".outcome-succeeded")).to_have_text("succeeded 3", timeout=12_000)
    expect(panel).not_to_have_attribute("data-live-poll", "")
    expect(panel).to_contain_text("final: this page no longer changes")
    expect(page.locator("[data-live-status]")).to_have_text("Up to date: nothing here can change")
    assert page.evaluate("window.__marker") == 1, "the page navigated instead of updating in place"
