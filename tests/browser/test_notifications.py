"""Notifications in Chromium, a new user's path: create a small batch on the sandbox, follow the Watch card to the
Notifications page, add a json:// destination (a tiny HTTP receiver in the test), watch the batch, and when the
sandbox finishes it the receiver gets exactly one message and the page's delivery log says it was sent."""

import re

from cryptography.fernet import Fernet
from django.db.models import F
from playwright.sync_api import expect

from batches import lookups
from sandbox.models import SandboxBatch
from tests.browser.conftest import chat_request, jsonl
from tests.conftest import TaskQueue
from tests.notifications.receiver import Receiver

DAY = 86_400
BATCH_PAGE = re.compile(r"/batches/(batch_[A-Za-z0-9_-]+)/$")


def test_a_new_user_creates_a_batch_watches_it_and_sees_its_notification_in_the_delivery_log(
    live_server, settings, login, operator
):
    settings.BATCHBOARD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.BATCHBOARD_ARCHIVE = "off"
    settings.BATCHBOARD_BASE_URL = live_server.url
    settings.SANDBOX_SPEED = 1.0  # a real hour per batch: it finishes when the test moves the sandbox's times
    receiver = Receiver().start()
    try:
        page = login(operator)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="New batch").click()
        page.get_by_label("JSONL file").set_input_files(
            files=[
                {
                    "name": "hello.jsonl",
                    "mimeType": "application/jsonl",
                    "buffer": jsonl([chat_request("request-1"), chat_request("request-2")]),
                }
            ]
        )
        page.get_by_role("button", name="Validate and create batch").click()
        expect(page).to_have_url(BATCH_PAGE)
        batch_id = BATCH_PAGE.search(page.url).group(1)
        batch_page = page.url

        # No destination yet: the Watch card says what it is for and where to add one.
        watch = page.get_by_role("region", name="Notifications")
        expect(watch).to_contain_text("Hear when this batch finishes")
        watch.get_by_role("link", name="add a destination").click()
        page.get_by_label("Name").fill("my laptop")
        page.get_by_label("Kind").select_option("apprise")
        page.get_by_label("URL or address").fill(receiver.json_url)
        page.get_by_role("button", name="Add the destination").click()
        expect(page.get_by_role("row", name="my laptop")).to_contain_text("json://127.0.0.1")
        expect(page.locator("main")).not_to_contain_text("team-token")

        page.goto(batch_page)
        page.get_by_role("region", name="Notifications").get_by_role("button", name="Watch").click()
        expect(page.locator("ul.messages")).to_contain_text(f"Watching batch {batch_id}")
        expect(page.get_by_role("region", name="Notifications")).to_contain_text("Watched by my laptop")

        # The sandbox finishes it (ten simulated days on), the next look records it final, and the workers run.
        SandboxBatch.objects.filter(pk=batch_id).update(
            created=F("created") - 10 * DAY, created_at=F("created_at") - 10 * DAY
        )
        lookups.refresh_batch(batch_id)
        TaskQueue().drain()

        (message,) = [received.json for received in receiver.received]
        assert message["title"] == f"batchboard: {batch_id} completed"
        assert f"{live_server.url}/batches/{batch_id}/" in message["message"]
        page.get_by_role("region", name="Notifications").get_by_role("link", name="delivery log").click()
        log = page.get_by_role("region", name="Delivery log", exact=True)
        expect(log.get_by_role("row", name=re.compile(batch_id))).to_contain_text("sent")
        expect(log).to_contain_text(f"{batch_id}: completed")
    finally:
        receiver.stop()
