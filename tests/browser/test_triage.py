"""Issue 22's findings in Chromium, where no other browser test drives them: the summary strip under a filter and the
batches its note leaves out (7), the Request column of the results, its toggle and the CSV's column (6), and a retry
of the lines the sandbox failed with server errors, which mostly succeeds (4). Needs attention against "has failed
lines" (3), the bulk-cancel dialog (7), a shared request link's login page (7) and the time zone kept per user (7)
are driven in test_list.py, test_results.py and test_login.py."""

import csv
import io
import re

import pytest
from django.db.models import F
from playwright.sync_api import expect

from batches import lookups, services
from batches.models import record_batch
from sandbox import results as sandbox_results
from sandbox.models import SandboxBatch
from tests.batch_api import payload
from tests.browser.conftest import CHAT_ENDPOINT, chat_request, jsonl
from tests.conftest import TaskQueue, kept_batch

DAYS_10 = 10 * 86_400


def _recorded(status: str, **fields):
    return record_batch(services.ApiBatch.from_api(payload(status, **fields)))


def test_the_summary_strip_says_a_filter_leaves_it_whole_and_leaves_out_only_batches_that_cost_something(
    live_server, login, viewer
):
    research = _recorded("in_progress", metadata={"team": "research"})
    ops = _recorded("in_progress", metadata={"team": "ops"})
    _recorded("completed", model="acme-model")  # used tokens at no known price: the strip must say so
    _recorded("failed")  # failed validation: no model, no usage, nothing to leave out
    page = login(viewer)
    strip = page.get_by_role("region", name="Summary of every batch")
    spent = strip.locator("#summary-spent")
    expect(spent).to_contain_text("leaves out 1 batch of acme-model")
    expect(spent).not_to_contain_text("unknown model")
    expect(strip.locator("#summary-scope")).to_have_count(0)

    page.get_by_label("Search").fill("team:research")
    page.get_by_label("Search").press("Enter")
    expect(page).to_have_url(re.compile(r"\?(.*&)?q=team%3Aresearch"))
    expect(page.locator("table.batches tbody tr")).to_have_count(1)
    expect(page.locator(f"#row-{research.batch_id}")).to_be_visible()
    expect(page.locator(f"#row-{ops.batch_id}")).to_have_count(0)
    expect(strip.locator("#summary-scope")).to_have_text(
        "These figures cover every batch: the filters apply to the table below, not to them."
    )
    running = strip.locator(".figure").filter(has=page.locator("#summary-running"))
    expect(running.locator(".figure-value")).to_have_text("2")  # both running batches, not the filter's one


def _asked(custom_id: str, question: str) -> bytes:
    line = chat_request(custom_id)
    line["body"]["messages"] = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": question},
    ]
    return jsonl([line]).rstrip(b"\n")


def test_the_results_show_what_each_line_asked_hide_it_on_request_and_export_it(live_server, login, viewer, tmp_path):
    questions = {"capital": "What is the capital of France?", "colour": "What colour is the sky?"}
    batch = kept_batch(
        {"capital": "ok", "colour": 400},
        tmp_path,
        lines={custom_id: _asked(custom_id, question) for custom_id, question in questions.items()},
    )
    page = login(viewer)
    page.goto(f"{live_server.url}/batches/{batch.batch_id}/results/")
    table = page.locator(".results-table")
    expect(table.get_by_role("columnheader", name="Request")).to_be_visible()
    for custom_id, question in questions.items():
        row = table.locator("tbody tr").filter(has_text=custom_id)
        expect(row.locator(".request-preview")).to_have_text(question)  # the last user message, not the system's

    page.get_by_label("Outcome", exact=True).select_option("failed")
    expect(table.locator("tbody tr")).to_have_count(1)
    page.get_by_role("link", name="Hide the Request column").click()
    expect(table.get_by_role("columnheader", name="Request")).to_have_count(0)
    expect(table.locator(".request-preview")).to_have_count(0)
    expect(table.locator("tbody tr")).to_have_count(1)  # the filter is kept
    page.get_by_label("Outcome", exact=True).select_option("")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator(".request-preview")).to_have_count(0)  # and so is the choice, across filters
    page.get_by_role("link", name="Show the Request column").click()
    expect(table.locator(".request-preview")).to_have_count(2)

    with page.expect_download() as download:
        page.locator("#export-csv").click()
    text = download.value.path().read_text(encoding="utf-8-sig")
    exported = list(csv.DictReader(io.StringIO(text)))
    assert {row["custom_id"]: row["request"] for row in exported} == questions


def _failing_with_server_errors(count: int) -> list[str]:
    """custom_ids of chat lines (as chat_request writes them) that the sandbox fails with a 500 at the first attempt."""
    failing = []
    for number in range(5_000):
        line = chat_request(f"flaky-{number}")
        outcome = sandbox_results.line_outcome(CHAT_ENDPOINT, line["custom_id"], line["body"])
        if outcome.status_code == 500:
            failing.append(line["custom_id"])
            if len(failing) == count:
                return failing
    pytest.fail("the sandbox failed too few lines with a 500")


def _finished_in_the_sandbox(batch_id: str) -> None:
    """The sandbox's clock seam: the batch made ten simulated days old is final at the next look, then recorded and
    its results kept (a task worker's part, done here)."""
    SandboxBatch.objects.filter(pk=batch_id).update(
        created=F("created") - DAYS_10, created_at=F("created_at") - DAYS_10
    )
    assert lookups.refresh_batch(batch_id)[0].is_terminal
    assert TaskQueue().drain() >= 1


def test_a_retry_of_the_lines_the_sandbox_failed_with_server_errors_mostly_succeeds(
    live_server, settings, login, operator
):
    flaky = _failing_with_server_errors(20)
    settings.SANDBOX_SPEED = 1.0
    client = services.get_client()
    uploaded = client.upload_fileobj(io.BytesIO(jsonl(chat_request(c) for c in flaky)), filename="input.jsonl")
    parent = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT)
    _finished_in_the_sandbox(parent.id)

    page = login(operator)
    page.goto(f"{live_server.url}/batches/{parent.id}/")
    expect(page.locator(".results-notice")).to_contain_text("20 of 20 failed")
    page.get_by_role("link", name="Retry the 20 lines of this group").click()
    expect(page.locator("#retry-count")).to_have_text("20")
    page.get_by_role("button", name=re.compile("Create the retry")).click()
    expect(page.locator("#retry-of")).to_contain_text(f"Retry of {parent.id}")
    retry_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    _finished_in_the_sandbox(retry_id)
    page.reload()
    page.locator("#final-results-link").click()
    succeeded = int(page.locator("#final-succeeded").inner_text())
    failing = int(page.locator("#final-failing").inner_text())
    assert succeeded + failing == 20
    assert succeeded >= 16, f"only {succeeded} of 20 server errors succeeded when retried"
    rows = page.locator("#final-table tbody tr")
    expect(rows.filter(has_text=retry_id)).to_have_count(succeeded + failing)
