"""Logging in through the real form in Chromium, with the strict CSP in force."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import log_in


def test_it_logs_in_and_shows_the_sandbox_banner(live_server, login, viewer):
    page = login(viewer)
    expect(page).to_have_url(re.compile(r"/batches/$"))
    expect(page.get_by_text("Sandbox — simulated batches.")).to_be_visible()


def test_it_rejects_a_wrong_password_with_a_message(live_server, page, viewer):
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(viewer.username)
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")


def test_the_time_zone_a_user_picked_applies_again_after_logging_in(live_server, page, new_page, login, viewer):
    login(viewer)
    page.get_by_role("link", name="Change time zone").click()
    page.get_by_label("Show times in").select_option("Asia/Tokyo")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("footer")).to_contain_text("Times are Asia/Tokyo")

    other = new_page()  # another browser: a new session
    other.goto(f"{live_server.url}/accounts/login/")
    log_in(other, viewer)
    other.wait_for_url("**/batches/**")
    expect(other.locator("footer")).to_contain_text("Times are Asia/Tokyo")
