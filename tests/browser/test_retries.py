"""Retrying in Chromium: a completed batch with failures, its 429s retried from the detail page, the new batch
linked on both pages, and the job's final results once the sandbox has run the retry (moved on by its clock seam)."""

import re

from django.db.models import F
from playwright.sync_api import expect

from batches import lookups
from sandbox import results as sandbox_results
from sandbox.models import SandboxBatch
from tests.conftest import TaskQueue, kept_batch

DAYS_10 = 10 * 86_400


def _answered_by_sandbox(prefix: str, count: int) -> list[str]:
    """custom_ids the sandbox answers successfully (its failures are chosen by a hash of the id)."""
    ids = (f"{prefix}-{n}" for n in range(1000))
    return [custom_id for custom_id in ids if sandbox_results._random_failure(custom_id) is None][:count]


def test_it_retries_the_429s_links_both_batches_and_merges_the_results(
    live_server, settings, login, operator, tmp_path
):
    rate_limited = _answered_by_sandbox("busy", 3)
    outcomes = {"fine-1": "ok", **dict.fromkeys(rate_limited, 429), "bad-1": 400, "fine-2": "ok"}
    parent = kept_batch(outcomes, tmp_path)
    settings.SANDBOX_SPEED = 1.0

    page = login(operator)
    page.goto(f"{live_server.url}/batches/{parent.batch_id}/")
    page.get_by_role("link", name="Retry the 3 lines of this group").click()
    expect(page.locator("#retry-count")).to_have_text("3")
    expect(page.locator("#cost-estimate")).to_contain_text("for the inputs of 3 requests")
    page.get_by_role("button", name=re.compile("Create the retry")).click()

    expect(page.locator("#retry-of")).to_contain_text(f"Retry of {parent.batch_id}")
    retry_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert retry_id.startswith("batch_") and retry_id != parent.batch_id
    page.get_by_role("link", name=parent.batch_id).first.click()
    expect(page.locator("#retried-by")).to_contain_text(f"Retried by {retry_id} (1 time)")

    # The sandbox's clock seam: the retry is made ten simulated days old, so it is final at the next look.
    SandboxBatch.objects.filter(pk=retry_id).update(
        created=F("created") - DAYS_10, created_at=F("created_at") - DAYS_10
    )
    assert lookups.refresh_batch(retry_id)[0].is_terminal
    assert TaskQueue().drain() >= 1  # a task worker keeps its results

    page.reload()
    page.locator("#final-results-link").click()
    expect(page.locator("#final-succeeded")).to_have_text("5")
    expect(page.locator("#final-failing")).to_have_text("1")
    rows = page.locator("#final-table tbody tr")
    expect(rows).to_have_count(6)
    expect(rows.filter(has_text=rate_limited[0])).to_contain_text(retry_id)
    expect(rows.filter(has_text="bad-1")).to_contain_text("original")
