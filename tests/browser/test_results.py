"""The results pages in Chromium: a completed batch filtered to its failures, one request, a shared request link
through login, and a results page that fills in by itself when its batch finishes."""

import io
import re

from django.db.models import F
from playwright.sync_api import expect

from batches import lookups, services
from results.models import ResultArchive
from sandbox.models import SandboxBatch
from tests.browser.conftest import (
    CHAT_ENDPOINT,
    chat_request,
    is_live_response,
    jsonl,
    log_in,
    network_barrier,
    watch_live_requests,
)
from tests.conftest import TaskQueue

DAY = 86_400
# Hides or shows the tab as the browser would (headless Chromium is never hidden by itself).
SET_HIDDEN = """hidden => {
  Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def _sandbox_batch(settings, *, age: float, failing=(3, 7)):
    """A 12-line batch in the sandbox (at speed 1), made `age` simulated seconds old; lines in `failing` ask for
    more tokens than the model allows, so they fail with a 400."""
    settings.SANDBOX_SPEED = 1.0
    lines = []
    for number in range(1, 13):
        line = chat_request(f"request-{number:02d}")
        if number in failing:
            line["body"]["max_tokens"] = 100_000
        elif number == 2:
            line["body"]["max_tokens"] = 300
        lines.append(line)
    client = services.get_client()
    uploaded = client.upload_fileobj(io.BytesIO(jsonl(lines)), filename="input.jsonl")
    created = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT)
    _age(created.id, age)
    return created.id


def _age(batch_id, seconds):
    SandboxBatch.objects.filter(pk=batch_id).update(
        created=F("created") - seconds, created_at=F("created_at") - seconds
    )


def test_it_filters_a_completed_batch_to_its_failures_and_shares_one_request(
    live_server, settings, login, new_page, viewer
):
    batch_id = _sandbox_batch(settings, age=10 * DAY)
    lookups.refresh_batch(batch_id)
    assert TaskQueue().drain() == 1  # a task worker keeps its results

    page = login(viewer)
    page.goto(f"{live_server.url}/batches/{batch_id}/")
    expect(page.locator(".results-notice")).to_contain_text("Completed, but not every line succeeded: 2 of 12 failed")
    page.get_by_role("link", name=re.compile("Open the results")).click()
    expect(page).to_have_url(f"{live_server.url}/batches/{batch_id}/results/")
    table = page.locator(".results-table tbody tr")
    expect(table).to_have_count(12)

    expect(page.locator(".results-export")).to_contain_text("Export 12 rows")
    page.get_by_label("Outcome", exact=True).select_option("failed")  # applies on change, as the list's menus do
    expect(page).to_have_url(re.compile(r"/results/\?outcome=failed"))
    expect(table).to_have_count(2)
    expect(page.locator(".results-export")).to_contain_text("Export 2 rows")
    for row in table.all():
        expect(row).to_contain_text("failed 400")
        expect(row).to_contain_text("invalid_value")

    page.locator(".results-table").get_by_role("link", name="request-03").click()
    expect(page).to_have_url(re.compile(r"/results/rows/\d+/\?outcome=failed$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("request-03")
    expect(page.get_by_role("region", name="Request")).to_contain_text("Say hello to request-03.")
    expect(page.get_by_role("region", name="Response")).to_contain_text("max_tokens is too large")
    page.get_by_role("link", name=re.compile("request-07")).click()  # next, within the filter
    expect(page.get_by_role("heading", level=1)).to_have_text("request-07")
    shared = page.get_by_label("Link to this request").input_value()
    assert re.fullmatch(re.escape(f"{live_server.url}/batches/{batch_id}/results/rows/") + r"\d+/", shared)

    teammate = new_page()
    teammate.goto(shared)
    expect(teammate).to_have_url(re.compile(r"/accounts/login/\?next=/batches/batch_\w+/results/rows/\d+/"))
    expect(teammate.get_by_role("heading", level=1)).to_contain_text(
        re.compile(rf"the request in row \d+ of the results of {batch_id}")
    )
    log_in(teammate, viewer)
    expect(teammate).to_have_url(shared)
    expect(teammate.get_by_role("heading", level=1)).to_have_text("request-07")
    expect(teammate.get_by_role("region", name="Request")).to_contain_text("Say hello to request-07.")


def test_the_results_page_fills_in_by_itself_when_the_batch_finishes(live_server, settings, login, viewer):
    batch_id = _sandbox_batch(settings, age=1_000, failing=())  # running: validated, about a third done
    page = login(viewer)
    page.goto(f"{live_server.url}/batches/{batch_id}/results/")
    page.get_by_label("Refresh every").select_option("2")  # the Live controls of every polled page
    expect(page.locator("#results-panel")).to_contain_text("Its results appear here when it finishes")

    _age(batch_id, 10 * DAY)  # the sandbox's batch is completed from now on
    # The next poll sees it final and asks for its results; a task worker (here, this thread) fetches them.
    page.wait_for_function("() => document.body.textContent.includes('Fetching the result files')")
    assert ResultArchive.objects.filter(batch__batch_id=batch_id).exists()
    assert TaskQueue().drain() >= 1  # its reaction, and the copy the open page hurried (a no-op)
    expect(page.locator(".results-table tbody tr")).to_have_count(12)
    expect(page.locator("#results-panel")).not_to_have_attribute("hx-trigger", re.compile("every"))


def test_the_results_page_pauses_while_the_tab_is_hidden(live_server, settings, page, login, viewer):
    batch_id = _sandbox_batch(settings, age=1_000, failing=())  # running: the page polls
    path = f"/batches/{batch_id}/results/"
    page.clock.install()  # the page's timers run in real time, and fast_forward skips ahead
    login(viewer)
    page.goto(f"{live_server.url}{path}")
    expect(page.locator("#results-panel")).to_have_attribute("data-live-poll", "")
    live = watch_live_requests(page, path)

    page.evaluate(SET_HIDDEN, True)
    for _interval in range(3):
        page.clock.fast_forward(30_000)  # longer than the longest interval
    network_barrier(page, live_server.url)

    assert live == [], "the results page polled while its tab was hidden"
    expect(page.locator("[data-live-status]")).to_have_text("Paused while hidden")
    with page.expect_response(is_live_response(path)):
        page.evaluate(SET_HIDDEN, False)  # shown again: refreshed at once
