"""Logging in through the real form in Chromium, with the strict CSP in force."""

import re

import pytest
from playwright.sync_api import expect

# The login form in a browser (throttling and sessions are tested on both databases in tests/views/).
pytestmark = pytest.mark.once


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
