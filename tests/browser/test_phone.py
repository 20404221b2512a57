"""A phone (390 by 844) in Chromium: the list as cards with no sideways scroll, Cancel on screen, the name in the
header, and a detail page whose timeline fits."""

from playwright.sync_api import expect

from tests.browser.conftest import log_in, long_running
from tests.conftest import kept_batch

PHONE = {"width": 390, "height": 844}
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


def _phone_page(new_page, live_server, user):
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page.goto(f"{live_server.url}/accounts/login/")
    log_in(page, user)
    page.wait_for_url("**/batches/**")
    return page


def _inside_viewport(page, locator):
    box = locator.bounding_box()
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and (box["x"] + box["width"] <= PHONE["width"] and box["y"] + box["height"] <= PHONE["height"])
    )


def test_it_shows_the_list_as_cards_with_the_cancel_button_on_screen(live_server, new_page, operator, make_batch):
    batch = long_running(make_batch)
    page = _phone_page(new_page, live_server, operator)
    row = page.locator(f"tr#row-{batch.id}")
    expect(row).to_have_attribute("data-live-state", "in_progress")

    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the list scrolls sideways on a phone"
    assert row.evaluate("el => getComputedStyle(el).display") == "grid"  # a card, not a table row
    cancel = row.get_by_role("link", name=f"Cancel {batch.id}")
    assert _inside_viewport(page, cancel), f"the Cancel button is off screen: {cancel.bounding_box()}"
    link = row.get_by_role("link", name=batch.id, exact=True)
    assert link.bounding_box()["height"] < 30, "the id wraps over several lines instead of being shortened"
    expect(row.locator("[data-status]")).to_be_visible()
    expect(row.locator(".progress-text")).to_be_visible()
    expect(page.locator(".site-header")).to_contain_text(operator.username)
    assert _inside_viewport(page, page.locator(".site-header .who"))


def test_it_fits_the_detail_page_and_its_timeline_on_a_phone(live_server, new_page, viewer, make_batch):
    batch = make_batch(2000, scenario="slow")
    page = _phone_page(new_page, live_server, viewer)
    page.goto(f"{live_server.url}/batches/{batch.id}/")
    timeline = page.get_by_role("region", name="Timeline")
    expect(timeline.get_by_text("in progress", exact=True)).to_be_visible()

    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the detail page scrolls sideways on a phone"
    wrap = page.locator(".history-timeline")
    assert wrap.evaluate("el => el.scrollWidth <= el.clientWidth"), "the timeline is wider than the screen"


def test_it_shows_what_went_wrong_as_cards(live_server, new_page, viewer, tmp_path):
    outcomes = {f"line-{n}": "ok" for n in range(6)}
    outcomes |= {"line-6": 500, "line-7": 400, "line-8": "expired"}
    batch = kept_batch(outcomes, tmp_path)
    page = _phone_page(new_page, live_server, viewer)
    page.goto(f"{live_server.url}/batches/{batch.batch_id}/results/")
    groups = page.locator("table.error-groups tbody tr")
    expect(groups.first).to_be_visible()
    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the results page scrolls sideways on a phone"
    for row in groups.all():
        assert row.evaluate("el => getComputedStyle(el).display") == "grid"  # a card, not a table row
    message = groups.first.locator("td.error-message")
    assert message.bounding_box()["width"] > 250, "the message is crushed into a narrow column"


def test_it_folds_the_filters_behind_a_button_so_the_first_batch_is_on_the_first_screen(
    live_server, new_page, page, login, viewer, make_batch
):
    batch = long_running(make_batch)
    phone = _phone_page(new_page, live_server, viewer)
    phone.goto(f"{live_server.url}/batches/?model=gpt-4o-mini-2024-07-18&q=batch")
    search = phone.get_by_label("Search")
    expect(search).to_be_hidden()
    row = phone.locator(f"tr#row-{batch.id}")
    assert _inside_viewport(phone, row.get_by_role("link", name=batch.id, exact=True)), "the first batch is off screen"
    phone.get_by_text("Filters (2)").click()
    expect(search).to_be_visible()
    expect(search).to_have_value("batch")

    login(viewer)  # a wide screen: the form is open, with no button to fold it
    expect(page.get_by_label("Search")).to_be_visible()
    expect(page.get_by_text("Filters (", exact=False)).to_be_hidden()
