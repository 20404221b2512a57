"""Notifications in Chromium, a new user's path: add a json:// destination on the Notifications page, press Watch on
a running batch's page, and when the sandbox finishes the batch, the receiver gets one message and the page's
delivery log says it was sent."""

import io

from cryptography.fernet import Fernet
from django.db.models import F
from playwright.sync_api import expect

from batches import lookups, services
from sandbox.models import SandboxBatch
from tests.browser.conftest import CHAT_ENDPOINT, chat_request, jsonl
from tests.conftest import TaskQueue
from tests.notifications.receiver import Receiver

DAY = 86_400


def test_a_user_adds_a_destination_watches_a_batch_and_sees_the_delivery(live_server, settings, login, viewer):
    settings.BATCHBOARD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.BATCHBOARD_ARCHIVE = "off"
    settings.SANDBOX_SPEED = 1.0
    receiver = Receiver().start()
    try:
        client = services.get_client()
        uploaded = client.upload_fileobj(io.BytesIO(jsonl([chat_request("request-1")])), filename="input.jsonl")
        created = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT)
        lookups.refresh_batch(created.id)

        page = login(viewer)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Notifications").click()
        page.get_by_text("Add a destination").click()
        page.get_by_label("Name").fill("my laptop")
        page.get_by_label("Kind").select_option("apprise")
        page.get_by_label("URL or address").fill(receiver.json_url)
        page.get_by_role("button", name="Add the destination").click()
        expect(page.get_by_role("row", name="my laptop")).to_contain_text("json://127.0.0.1")
        expect(page.locator("main")).not_to_contain_text("team-token")

        page.goto(f"{live_server.url}/batches/{created.id}/")
        watch = page.get_by_role("region", name="Notifications")
        watch.get_by_role("button", name="Watch").click()
        expect(page.locator("ul.messages")).to_contain_text(f"Watching batch {created.id}")
        expect(page.get_by_role("region", name="Notifications")).to_contain_text("Watched by my laptop")

        # The sandbox finishes it (ten simulated days on), and the next look records it final.
        SandboxBatch.objects.filter(pk=created.id).update(
            created=F("created") - 10 * DAY, created_at=F("created_at") - 10 * DAY
        )
        lookups.refresh_batch(created.id)
        TaskQueue().drain()

        assert [received.json["title"] for received in receiver.received] == [f"batchboard: {created.id} completed"]
        page.goto(f"{live_server.url}/notifications/")
        log = page.get_by_role("region", name="Delivery log", exact=True)
        expect(log).to_contain_text(f"{created.id}: completed")
        expect(log).to_contain_text("sent")
    finally:
        receiver.stop()
