"""A share link in Chromium: made on a batch's page, opened in a browser with no session (the page, its results and
one request, with nothing to click that changes anything), then revoked by its maker."""

import io
import re

from django.db.models import F
from playwright.sync_api import expect

from batches import lookups, services
from sandbox.models import SandboxBatch
from tests.browser.conftest import CHAT_ENDPOINT, chat_request, jsonl
from tests.conftest import TaskQueue

DAY = 86_400


def _completed_batch(settings) -> str:
    """A 4-line batch the sandbox has finished (made ten simulated days old), recorded and its results kept."""
    settings.SANDBOX_SPEED = 1.0
    client = services.get_client()
    lines = [chat_request(f"request-{number}") for number in range(1, 5)]
    uploaded = client.upload_fileobj(io.BytesIO(jsonl(lines)), filename="input.jsonl")
    created = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT)
    SandboxBatch.objects.filter(pk=created.id).update(
        created=F("created") - 10 * DAY, created_at=F("created_at") - 10 * DAY
    )
    lookups.refresh_batch(created.id)
    assert TaskQueue().drain() == 1  # a task worker keeps its results
    return created.id


def test_a_reader_without_an_account_opens_the_link_until_its_maker_revokes_it(
    live_server, settings, login, new_page, viewer
):
    batch_id = _completed_batch(settings)
    page = login(viewer)
    page.goto(f"{live_server.url}/batches/{batch_id}/")
    card = page.get_by_role("region", name="Share links")
    card.get_by_label("Name").fill("for the auditors")
    card.get_by_label("Works for").select_option(label="7 days")
    card.get_by_label("Include its results").check()
    card.get_by_role("button", name="Make link").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Share link made")
    shared = page.get_by_label("Share link").input_value()
    assert re.fullmatch(re.escape(live_server.url) + r"/shared/[A-Za-z0-9_-]{43}/", shared)

    reader = new_page()
    response = reader.goto(shared)
    assert response.status == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-robots-tag"].startswith("noindex")
    expect(reader).to_have_url(shared)  # no login asked for
    expect(reader.get_by_role("heading", level=1)).to_have_text(batch_id)
    expect(reader.get_by_role("button")).to_have_count(0)
    expect(reader.locator("a[href^='/batches/'], a[href*='/accounts/']")).to_have_count(0)
    reader.get_by_role("link", name="Results").click()
    rows = reader.locator(".results-table tbody tr")
    expect(rows).to_have_count(4)
    expect(reader.locator("#export-csv")).to_have_count(0)  # exports were not allowed
    reader.locator(".results-table").get_by_role("link", name="request-2").click()
    expect(reader.get_by_role("heading", level=1)).to_have_text("request-2")
    expect(reader.get_by_role("region", name="Request")).to_contain_text("request-2")

    page.goto(f"{live_server.url}/batches/{batch_id}/")
    card = page.get_by_role("region", name="Share links")
    expect(card).to_contain_text("for the auditors")
    expect(card).to_contain_text("made by viewer")
    card.get_by_role("button", name="Revoke for the auditors").click()
    expect(page.locator(".messages")).to_contain_text("is revoked")
    expect(page.get_by_role("region", name="Share links")).to_contain_text("No working links")

    ended = reader.request.get(shared)  # not a navigation: a 410 page would be a console error
    assert ended.status == 410
    assert batch_id not in ended.text()
    expect(page.get_by_role("region", name="Activity")).to_contain_text("Opened by share link for the auditors")
