"""Live regions in Chromium: a refresh keeps the keyboard focus and open details, and skips an unchanged answer."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import is_live_response, speed_for

# Set on a live region's element; a swap replaces the element, and the mark goes with it.
MARK = "el => { el.dataset.testMark = '1'; }"
MARKED = "id => document.getElementById(id) && document.getElementById(id).dataset.testMark === '1'"


def _refresh_every_2_seconds(page):
    page.get_by_label("Refresh every").select_option("2")


def _wait_until_replaced(page, element_id):
    # A function, not an expression: Playwright evaluates expressions with eval, which the CSP forbids.
    replaced = "id => !(document.getElementById(id) && document.getElementById(id).dataset.testMark === '1')"
    page.wait_for_function(replaced, arg=element_id, timeout=12_000)


def test_it_keeps_the_focus_on_a_status_filter_link_across_refreshes(live_server, login, viewer, make_batch):
    make_batch(2000, scenario="slow")
    page = login(viewer)
    _refresh_every_2_seconds(page)
    chip = page.locator("#status-chip-active")
    chip.focus()
    page.locator("#status-filter").evaluate(MARK)

    _wait_until_replaced(page, "status-filter")

    expect(page.locator("#status-chip-active")).to_be_focused()


def test_it_keeps_the_data_points_open_and_the_focus_on_a_download_link(live_server, login, viewer, make_batch):
    batch = make_batch(speed_for(40))
    page = login(viewer)
    page.goto(f"{live_server.url}/batches/{batch.id}/")
    _refresh_every_2_seconds(page)
    page.locator("#history-data-toggle").click(timeout=12_000)  # the chart appears with the first observations
    page.locator("#download-input").focus()
    page.locator("#batch-panel").evaluate(MARK)

    _wait_until_replaced(page, "batch-panel")

    expect(page.locator("#history-data")).to_have_attribute("open", "")
    expect(page.locator("#download-input")).to_be_focused()


def test_it_leaves_a_live_region_alone_when_the_server_says_nothing_changed(live_server, login, viewer, make_batch):
    batch = make_batch(speed_for(40))
    path = f"/batches/{batch.id}/"
    page = login(viewer)
    sent_keys = []

    def _unchanged_after_the_first(route):
        # The first refresh gets the server's answer; every later one the server's "nothing changed" (204), as
        # tests/views/test_live.py shows the server answers when the key sent back is that of the current rendering.
        if not route.request.headers.get("hx-request"):
            route.continue_()
            return
        sent_keys.append(route.request.headers.get("x-batchboard-shown"))
        if len(sent_keys) == 1:
            route.continue_()
        else:
            route.fulfill(status=204, body="")

    page.route(f"**{path}", _unchanged_after_the_first)
    page.goto(f"{live_server.url}{path}")
    page.locator("#batch-panel").evaluate(MARK)
    _refresh_every_2_seconds(page)
    _wait_until_replaced(page, "batch-panel")  # the first answer is swapped in
    page.locator("#batch-panel").evaluate(MARK)
    shown_key = page.locator("#batch-panel").get_attribute("hx-headers")

    for _poll in range(2):
        with page.expect_response(is_live_response(path), timeout=12_000):
            pass

    assert page.evaluate(MARKED, "batch-panel"), "an unchanged answer replaced the region"
    expect(page.locator("[data-live-status]")).to_have_text(re.compile(r"^Updated \d\d:\d\d:\d\d$"))  # 24-hour
    assert sent_keys[-1] and sent_keys[-1] in shown_key  # the region sends the key of what it shows
