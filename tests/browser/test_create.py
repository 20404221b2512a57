"""Creating a batch in Chromium: a bad file is explained line by line and sends nothing; a good one opens the batch."""

import re

from playwright.sync_api import expect

from batches import services
from batches.models import Batch
from sandbox.models import SandboxBatch, SandboxFile
from tests.browser.conftest import chat_request, jsonl

BATCH_PAGE = re.compile(r"/batches/(batch_[A-Za-z0-9_-]+)/$")


def _choose_file(page, content: bytes, name: str = "requests.jsonl"):
    page.get_by_label("JSONL file").set_input_files(
        files=[{"name": name, "mimeType": "application/jsonl", "buffer": content}]
    )


def test_it_shows_the_lines_of_a_bad_upload_and_sends_nothing(live_server, login, operator, sandbox_requests):
    content = jsonl(
        [
            chat_request("request-1"),
            chat_request("request-2"),
            '{"custom_id": "request-3", "method": "POST",',
            chat_request("request-4"),
            chat_request("request-1"),
        ]
    )
    page = login(operator)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New batch").click()
    _choose_file(page, content)
    page.get_by_role("button", name="Validate and create batch").click()

    expect(page.get_by_role("alert")).to_contain_text("Nothing was created")
    expect(page.get_by_text(re.compile(r"^Line 3: not valid JSON"))).to_be_visible()
    expect(page.get_by_text("Line 5: custom_id 'request-1' is already used on line 1.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Line [124]:"))).to_have_count(0)
    expect(page.get_by_label("JSONL file")).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(f"{live_server.url}/batches/new/")
    assert [request for request in sandbox_requests if request[0] == "POST"] == []
    assert not services.get_client().list_batches().data
    assert not SandboxFile.objects.exists()
    assert not SandboxBatch.objects.exists()
    assert not Batch.objects.exists()


def test_it_opens_the_new_batch_after_a_good_upload(live_server, login, operator):
    content = jsonl([chat_request(f"request-{number}") for number in range(1, 4)])
    page = login(operator)
    page.goto(f"{live_server.url}/batches/new/")
    _choose_file(page, content)
    page.get_by_label("Metadata key 1", exact=True).fill("description")
    page.get_by_label("Metadata value 1", exact=True).fill("Greetings, take one")
    page.get_by_role("button", name="Validate and create batch").click()

    expect(page).to_have_url(BATCH_PAGE)
    batch_id = BATCH_PAGE.search(page.url).group(1)
    expect(page.get_by_role("heading", level=1)).to_have_text(batch_id)
    expect(page.get_by_role("status").filter(has_text="created")).to_have_text(f"Batch {batch_id} created.")
    expect(page.get_by_text("Greetings, take one").first).to_be_visible()
    created = services.get_client().retrieve_batch(batch_id)
    assert created.endpoint == "/v1/chat/completions"
    assert created.metadata == {"description": "Greetings, take one"}
    assert SandboxBatch.objects.count() == 1


def test_it_shows_the_cost_estimate_as_soon_as_a_file_is_chosen(live_server, login, operator, sandbox_requests):
    content = jsonl([chat_request(f"request-{number}") for number in range(1, 41)])
    page = login(operator)
    page.goto(f"{live_server.url}/batches/new/")
    _choose_file(page, content)  # no click: choosing the file checks it

    check = page.locator("#file-check")
    expect(check).to_contain_text("The file is valid")
    expect(check.get_by_role("heading", name="Estimated cost")).to_be_visible()
    expect(check).to_contain_text("for the inputs of 40 requests")
    page.get_by_role("button", name="Check file").click()
    expect(check.get_by_role("heading", name="Estimated cost")).to_have_count(1)
    assert [request for request in sandbox_requests if request[0] == "POST"] == []  # nothing sent yet
