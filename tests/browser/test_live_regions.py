"""Live regions in Chromium: a refresh keeps the keyboard focus and open details, and skips an unchanged answer."""

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


def test_it_leaves_a_live_region_alone_when_the_answer_has_not_changed(live_server, login, viewer, make_batch):
    batch = make_batch(speed_for(40))
    path = f"/batches/{batch.id}/"
    page = login(viewer)
    answers = []

    def _same_answer_every_time(route):
        # The first refresh gets the server's answer; every later one gets that answer again.
        if not route.request.headers.get("hx-request"):
            route.continue_()
            return
        if not answers:
            answers.append(route.fetch().text())
        route.fulfill(status=200, body=answers[0], content_type="text/html")

    page.route(f"**{path}", _same_answer_every_time)
    page.goto(f"{live_server.url}{path}")
    page.locator("#batch-panel").evaluate(MARK)
    _refresh_every_2_seconds(page)
    _wait_until_replaced(page, "batch-panel")  # the first answer is swapped in
    page.locator("#batch-panel").evaluate(MARK)

    for _poll in range(2):
        with page.expect_response(is_live_response(path), timeout=12_000):
            pass

    assert page.evaluate(MARKED, "batch-panel"), "an unchanged answer replaced the region"
    expect(page.locator("[data-live-status]")).to_contain_text("Updated")
