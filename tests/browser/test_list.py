"""The batch list in Chromium: rows that follow the API without a reload, cancelling from a row, the Live toggle."""

import re
import time
from urllib.parse import urlsplit

from playwright.sync_api import expect

from batches import services
from batches.models import record_batch
from tests.batch_api import payload
from tests.browser.conftest import (
    is_live_response,
    long_running,
    network_barrier,
    speed_for,
    watch_live_requests,
)

LIST_PATH = "/batches/"
RUNNING = re.compile(r"^(validating|in_progress)$")
NOT_FINAL = re.compile(r"^(validating|in_progress|finalizing)$")


def _row(page, batch_id):
    return page.locator(f"tr#row-{batch_id}")


def _refresh_every_2_seconds(page):
    page.get_by_label("Refresh every").select_option("2")


def test_it_updates_a_running_batchs_row_without_a_reload(live_server, login, viewer, make_batch, sandbox_clock):
    batch = make_batch(speed_for(60))  # running until the test moves the sandbox clock
    page = login(viewer)
    _refresh_every_2_seconds(page)
    row = _row(page, batch.id)
    expect(row).to_have_attribute("data-live-state", RUNNING)
    progress_before = row.locator(".progress-text").inner_text()
    page.evaluate("window.__marker = 1")
    sandbox_clock.advance(80)  # the batch finishes in the sandbox; the page learns it at its next refresh

    expect(row).to_have_attribute("data-live-state", re.compile(r"^(finalizing|completed)$"), timeout=12_000)
    expect(row.locator("[data-status]")).to_have_text(re.compile(r"finalizing|completed"))
    expect(row.locator(".progress-text")).not_to_have_text(progress_before)
    expect(row.locator(".progress-text")).to_contain_text("20 / 20")
    assert page.evaluate("window.__marker") == 1, "the page navigated instead of updating in place"


def test_it_cancels_a_running_batch_from_its_row_after_confirming(
    live_server, login, operator, make_batch, sandbox_requests
):
    batch = long_running(make_batch)
    page = login(operator)
    row = _row(page, batch.id)
    expect(row).to_have_attribute("data-live-state", "in_progress")
    cancel_posts = []
    page.on("request", lambda request: cancel_posts.append(request) if request.method == "POST" else None)

    row.get_by_role("link", name=f"Cancel {batch.id}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Cancel {batch.id}?")
    expect(dialog).to_contain_text(re.compile(r"\d+ of 20 requests processed, in progress"))
    expect(dialog.get_by_role("button", name="Keep running")).to_be_focused()  # the safe choice is the default
    assert cancel_posts == []
    dialog.get_by_role("button", name="Cancel batch").click()

    # Sooner than the 5 s poll: the cancel's own answer updates the row.
    expect(row).to_have_attribute("data-live-state", re.compile(r"^(cancelling|cancelled)$"), timeout=2_500)
    expect(row.get_by_role("link", name=re.compile("Cancel"))).to_have_count(0)
    expect(dialog).to_be_hidden()
    assert [urlsplit(request.url).path for request in cancel_posts] == [f"/batches/{batch.id}/cancel/"]
    assert sandbox_requests.count(("POST", f"/sandbox/v1/batches/{batch.id}/cancel")) == 1
    assert services.get_client().retrieve_batch(batch.id).cancelling_at is not None


def test_it_cancels_nothing_when_the_confirm_is_dismissed(
    live_server, page, login, operator, make_batch, sandbox_requests
):
    batch = long_running(make_batch)
    page.clock.install()
    login(operator)
    row = _row(page, batch.id)
    expect(row).to_have_attribute("data-live-state", "in_progress")
    posts = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)

    row.get_by_role("link", name=f"Cancel {batch.id}").click()
    page.get_by_role("dialog").get_by_role("button", name="Keep running").click()
    expect(page.get_by_role("dialog")).to_be_hidden()
    # A live refresh answered after the click: a cancel, had one been sent, would have been sent before it.
    with page.expect_response(is_live_response(LIST_PATH)):
        page.clock.fast_forward(5_000)

    expect(row).to_have_attribute("data-live-state", "in_progress")
    expect(row.get_by_role("link", name=f"Cancel {batch.id}")).to_be_visible()
    assert posts == []
    assert not [request for request in sandbox_requests if request[1].endswith("/cancel")]
    assert services.get_client().retrieve_batch(batch.id).cancelling_at is None


def test_it_cancels_the_selected_batches_after_one_confirm(live_server, login, operator, make_batch, sandbox_requests):
    first, second, kept = (long_running(make_batch) for _ in range(3))
    page = login(operator)
    page.get_by_label(f"Select {first.id}", exact=True).check()
    page.get_by_label(f"Select {second.id}", exact=True).check()
    page.get_by_role("button", name="Cancel selected (2)").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel 2 selected batches?")
    expect(dialog).to_contain_text("Requests already running finish")
    for batch in (first, second):
        expect(dialog).to_contain_text(batch.id)  # the dialog names the batches it cancels
    expect(dialog).not_to_contain_text(kept.id)
    dialog.get_by_role("button", name="Cancel 2 batches").click()

    expect(page.locator("#bulk-result")).to_contain_text("2 cancels requested")
    for batch in (first, second):
        expect(_row(page, batch.id)).to_have_attribute("data-live-state", re.compile(r"^(cancelling|cancelled)$"))
    expect(_row(page, kept.id)).to_have_attribute("data-live-state", "in_progress")
    cancels = sorted(path for method, path in sandbox_requests if method == "POST" and path.endswith("/cancel"))
    assert cancels == sorted(f"/sandbox/v1/batches/{batch.id}/cancel" for batch in (first, second))


def test_it_stops_polling_while_live_is_off_and_resumes_when_it_is_on(live_server, page, login, viewer, make_batch):
    long_running(make_batch)  # keeps the list polling
    page.clock.install()  # the page's timers run in real time, and fast_forward skips ahead
    login(viewer)
    live = watch_live_requests(page, LIST_PATH)
    with page.expect_response(is_live_response(LIST_PATH)):
        page.clock.fast_forward(5_000)

    toggle = page.get_by_label("Live", exact=True)
    toggle.uncheck()
    expect(page.locator("[data-live-status]")).to_have_text("Paused")
    polls_before = len(live)
    for _interval in range(3):
        page.clock.fast_forward(30_000)  # longer than the longest interval
    network_barrier(page, live_server.url)
    assert len(live) == polls_before, "the list kept polling with Live off"

    with page.expect_response(is_live_response(LIST_PATH)):
        toggle.check()  # at once, without waiting for the next tick
    with page.expect_response(is_live_response(LIST_PATH)):
        page.clock.fast_forward(5_000)
    expect(page.locator("[data-live-status]")).to_have_text(re.compile(r"^Updated "))


def test_it_stops_polling_by_itself_once_every_batch_is_final(
    live_server, page, login, viewer, make_batch, sandbox_clock
):
    batch = make_batch(speed_for(60))  # running until the test moves the sandbox clock
    page.clock.install()
    login(viewer)
    expect(_row(page, batch.id)).to_have_attribute("data-live-state", NOT_FINAL)
    live = watch_live_requests(page, LIST_PATH)
    sandbox_clock.advance(80)  # the batch finishes in the sandbox
    _refresh_every_2_seconds(page)

    with page.expect_response(lambda r: is_live_response(LIST_PATH)(r) and r.status == 286, timeout=12_000):
        page.clock.fast_forward(2_000)  # the next refresh, now
    expect(_row(page, batch.id)).to_have_attribute("data-live-state", "completed")
    expect(page.locator("#batch-table")).not_to_have_attribute("hx-get", re.compile(".*"))
    expect(page.locator("[data-live-status]")).to_have_text("Up to date: nothing here can change")
    polls = len(live)
    for _interval in range(3):
        page.clock.fast_forward(30_000)
    network_barrier(page, live_server.url)
    assert len(live) == polls, "the list kept polling after the server said nothing can change"


def test_it_saves_the_filtered_list_as_a_view_in_the_navigation(live_server, login, viewer):
    page = login(viewer)
    page.goto(f"{live_server.url}/batches/?status=failed&sort=created")
    page.get_by_text("Save this view").click()
    page.get_by_label("Name").fill("Failures, oldest first")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messages")).to_contain_text("Saved “Failures, oldest first”")

    page.goto(f"{live_server.url}/batches/prices/")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_text("Saved views", exact=True).click()
    nav.get_by_role("link", name="Failures, oldest first").click()
    expect(page).to_have_url(f"{live_server.url}/batches/?status=failed&sort=created")


def test_needs_attention_lists_what_someone_should_look_at_and_failed_lines_the_rest(live_server, login, viewer):
    now = int(time.time())
    failed = record_batch(services.ApiBatch.from_api(payload("failed")))
    expiring = record_batch(services.ApiBatch.from_api(payload("in_progress", expires_at=now + 1800)))
    one_in_a_thousand = record_batch(
        services.ApiBatch.from_api(payload("completed", request_counts={"total": 1000, "completed": 999, "failed": 1}))
    )
    page = login(viewer)
    page.get_by_role("link", name=re.compile(r"^needs attention")).click()
    rows = page.locator("table.batches tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator(f"#row-{failed.batch_id}")).to_be_visible()
    expect(page.locator(f"#row-{expiring.batch_id}")).to_be_visible()
    page.get_by_role("link", name=re.compile(r"^has failed lines")).click()
    expect(page.locator(f"#row-{one_in_a_thousand.batch_id}")).to_be_visible()
    expect(page.locator(f"#row-{expiring.batch_id}")).to_have_count(0)
