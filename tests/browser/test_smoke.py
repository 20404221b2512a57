"""Each page in light and dark colour schemes and at a phone's width: no CSP violation, no script error, no sideways
scroll."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DESKTOP, PHONE, speed_for

VARIANTS = [("light", DESKTOP), ("dark", DESKTOP), ("light", PHONE), ("dark", PHONE)]


def _page_urls(live_server, which, make_batch):
    if which == "list":
        make_batch(speed_for(0.05))
        make_batch(speed_for(600))
        return [f"{live_server.url}/batches/"]
    if which == "detail":
        finished = make_batch(speed_for(0.05))
        running = make_batch(speed_for(600))
        return [f"{live_server.url}/batches/{finished.id}/", f"{live_server.url}/batches/{running.id}/"]
    return [f"{live_server.url}/batches/new/"]


@pytest.mark.parametrize("which", ["list", "detail", "create"])
def test_it_renders_cleanly_in_each_colour_scheme_and_at_phone_width(
    live_server, page, login, operator, make_batch, which
):
    urls = _page_urls(live_server, which, make_batch)
    login(operator)
    backgrounds = {}
    for url in urls:
        for scheme, viewport in VARIANTS:
            page.emulate_media(color_scheme=scheme)
            page.set_viewport_size(viewport)
            page.goto(url)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            if which == "detail":
                expect(page.get_by_role("button", name="Copy link")).to_be_visible()  # copy-link.js has run
            if page.locator("[data-live-status]").count():
                expect(page.locator("[data-live-status]")).not_to_be_empty()  # live.js has run
            backgrounds[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{url} scrolls sideways by {overflow}px in {scheme} at {viewport['width']}px"
    assert backgrounds["light"] != backgrounds["dark"], "the dark colour scheme changes nothing"


def test_it_shows_model_ids_as_written_on_the_prices_page(live_server, page, login, viewer):
    login(viewer)
    page.goto(f"{live_server.url}/batches/prices/")
    row_header = page.locator(".prices-table tbody th").first
    expect(row_header).to_be_visible()
    assert row_header.evaluate("th => getComputedStyle(th).textTransform") == "none"
    assert row_header.inner_text() == row_header.inner_text().lower()  # ids such as gpt-4o-mini, not GPT-4O-MINI
