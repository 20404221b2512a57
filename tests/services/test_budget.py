"""The upstream budget: every caller in every process shares it; a 429 pauses them all; the totals add up."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings

from batches import budget, freshness, services
from batches.models import UpstreamMinute
from tests.fake_api import Reply

BUDGET = 8
# The budget is per clock minute: every process of the multi-process test holds its clock (budget.clock) still in
# this one, so that all their calls fall in the same minute whenever the test runs.
HELD_MINUTE = 6_000_000 * 60.0 + 30


def _api_calls(api):
    return [r for r in api.server.received if r.method == "GET"]


def _child(code: str, api_url: str, database_url: str) -> subprocess.Popen:
    """A Python process on the test's database and API, its budget's clock held in HELD_MINUTE, running `code`."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SANDBOX_URL": api_url,
        "OPENAI_API_KEY": "",
        "OPENAI_MAX_RETRIES": "0",
        "BATCHBOARD_UPSTREAM_BUDGET": str(BUDGET),
        "BATCHBOARD_LOG_LEVEL": "ERROR",
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    script = (
        "import django\ndjango.setup()\n"
        f"from batches import budget\nbudget.clock = lambda: {HELD_MINUTE!r}\n" + textwrap.dedent(code)
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.django_db(transaction=True)
def test_detail_views_and_loop_passes_in_two_processes_stay_within_the_budget(
    api, viewer_client, database_url, settings, monkeypatch
):
    settings.BATCHBOARD_UPSTREAM_BUDGET = BUDGET
    monkeypatch.setattr(budget, "clock", lambda: HELD_MINUTE)
    running = [api.add("in_progress")["id"] for _ in range(3)]
    # Another process: a burst of refreshes, as detail pages of running batches make them.
    viewers = _child(
        f"""
        from batches import services
        client = services.get_client()
        sent = 0
        for _ in range(10):
            try:
                client.retrieve_batch({running[0]!r})
                sent += 1
            except services.BudgetExhausted:
                pass
        print(sent)
        """,
        api.server.url,
        database_url,
    )
    # A third process: a sync loop's passes.
    loop = _child(
        """
        from batches import sync
        for _ in range(10):
            sync.run_pass(force=True)
        print("done")
        """,
        api.server.url,
        database_url,
    )
    # And this process: detail pages of running batches, each due for a refresh (the interval is 0 in tests).
    for _ in range(5):
        for batch_id in running:
            assert viewer_client.get(f"/batches/{batch_id}/").status_code == 200
    assert viewers.communicate(timeout=60)[0].strip().isdigit()
    assert loop.communicate(timeout=60)[0].strip() == "done"

    assert len(_api_calls(api)) == BUDGET
    assert budget.current_minute()["calls"] == BUDGET
    assert budget.totals()["calls"] == BUDGET


@pytest.mark.django_db
def test_a_page_over_budget_shows_the_cache_and_says_why(api, viewer_client, settings, monkeypatch):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 1
    monkeypatch.setattr(budget, "clock", lambda: 3_000_000 * 60.0 + 30)  # one minute, held still
    batch_id = api.add("in_progress")["id"]
    assert viewer_client.get(f"/batches/{batch_id}/").status_code == 200  # spends the one call

    response = viewer_client.get(f"/batches/{batch_id}/")

    assert response.status_code == 200
    assert "budget of 1 API calls a minute is spent" in response.text
    assert len(_api_calls(api)) == 1


@pytest.mark.django_db
def test_a_429_pauses_every_caller_for_its_retry_after(api, settings):
    batch_id = api.add("in_progress")["id"]
    api.server.script(
        "GET", f"/batches/{batch_id}", Reply(429, {"error": {"message": "slow down"}}, headers={"retry-after": "30"})
    )
    client = services.get_client()
    with pytest.raises(services.RateLimited):
        client.retrieve_batch(batch_id)

    with pytest.raises(services.BudgetExhausted, match="slow down"):
        client.retrieve_batch(batch_id)  # not sent: every caller waits out the Retry-After
    with pytest.raises(services.BudgetExhausted):
        budget.take(now=time.time() + 29)
    budget.take(now=time.time() + 31)

    assert len(_api_calls(api)) == 1
    assert budget.totals() == {"calls": 2, "errors": 1, "rate_limited": 1}


@pytest.mark.django_db
def test_old_minutes_are_folded_into_the_totals(settings):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 5
    start = 1_000_000 * 60.0
    for minute in range(3):
        for _ in range(5):
            budget.take(now=start + minute * 60)
    budget.record(500, None, now=start)

    budget.take(now=start + (budget.KEPT_MINUTES + 3) * 60)

    assert budget.totals() == {"calls": 16, "errors": 1, "rate_limited": 0}
    assert UpstreamMinute.objects.count() == 2  # the totals and the current minute


@pytest.mark.django_db
def test_the_budget_message_reads_plainly(settings):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 1
    now = 2_000_000 * 60.0
    budget.take(now=now)
    with pytest.raises(services.BudgetExhausted) as caught:
        budget.take(now=now + 1)

    message = freshness.failure_message(caught.value)

    assert message.startswith("batchboard's budget of 1 API calls a minute is spent")
    assert 58 < caught.value.retry_after <= 59


@pytest.mark.django_db
def test_the_last_tenth_of_each_minute_is_kept_for_cancels(settings):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 20
    now = 4_000_000 * 60.0
    for _ in range(18):
        budget.take(now=now)
    with pytest.raises(services.BudgetExhausted, match=r"spent \(kept back: 2 for cancels\)"):
        budget.take(now=now)

    budget.take(now=now, caller=services.CallFor.CANCEL)
    budget.take(now=now, caller=services.CallFor.CANCEL)
    with pytest.raises(services.BudgetExhausted):
        budget.take(now=now, caller=services.CallFor.CANCEL)
    assert budget.current_minute(now=now) == {"calls": 20, "budget": 20}


@pytest.mark.django_db
def test_a_cancel_goes_through_when_the_sync_loop_has_spent_its_share(api, operator_client, settings, monkeypatch):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 10
    monkeypatch.setattr(budget, "clock", lambda: 5_000_000 * 60.0 + 30)  # one minute, held still
    batch_id = api.add("in_progress")["id"]
    for _ in range(9):
        budget.take()
    with pytest.raises(services.BudgetExhausted):
        services.get_client().retrieve_batch(batch_id)  # what the loop and pages use: their share is spent

    response = operator_client.post(f"/batches/{batch_id}/cancel/")

    assert response.status_code in (200, 302, 303)
    assert api.cancels == [batch_id]


@pytest.mark.django_db
def test_a_minute_opened_by_another_process_meanwhile_is_not_called_spent(settings, monkeypatch):
    """The first call of a minute finds no row; another process opens the minute before this one looks again: the
    call is counted in that row instead of being refused as if the budget were spent (a flaky BudgetExhausted)."""
    settings.BATCHBOARD_UPSTREAM_BUDGET = 100
    now = 1_800_000_000.0
    minute = int(now // 60)
    spend = budget._spend
    calls = []

    def spend_while_another_process_opens_the_minute(at_minute, caller, connection_id, per_minute):
        calls.append(at_minute)
        if len(calls) == 1:
            # the other process, between our two queries
            UpstreamMinute.objects.get_or_create(connection_id=connection_id, minute=at_minute)
            return False
        return spend(at_minute, caller, connection_id, per_minute)

    monkeypatch.setattr(budget, "_spend", spend_while_another_process_opens_the_minute)
    budget.take(now)
    assert UpstreamMinute.objects.get(minute=minute).calls == 1
