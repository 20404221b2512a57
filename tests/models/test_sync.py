"""The sync loop: what a pass costs in upstream calls, the background import, the lease, and the command."""

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches import budget, freshness, list_figures, services, sync
from batches.models import Batch, BatchSnapshot, DailySpend, SyncState, data_version
from tests.conftest import create_batches
from tests.fake_api import Reply

NOW = int(time.time())


def list_calls(api):
    """The `after` cursor of every list call the fake API received, in order ("" for the top)."""
    return [r.query.get("after", [""])[0] for r in api.server.received if r.method == "GET" and r.path == "/batches"]


def retrieves(api):
    return [r.path for r in api.server.received if r.method == "GET" and r.path.startswith("/batches/")]


def add_batches(api, count, status, *, newest_age, step=60):
    """`count` batches in the API only (not yet in the cache), the newest created `newest_age` seconds ago."""
    return [api.add(status, record=False, created_at=NOW - newest_age - step * n)["id"] for n in range(count)]


def one_pass(**kwargs):
    outcome = sync.run_pass(force=True, **kwargs)
    assert outcome.ran and not outcome.error, outcome.describe()
    return outcome.result


@pytest.fixture
def sync_log(caplog):
    """The sync's log lines (the batches logger does not propagate to the root logger caplog listens on)."""
    logger = logging.getLogger("batches")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="batches")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 3 batches, so that a handful of batches spans several pages."""
    monkeypatch.setattr(sync, "PAGE_SIZE", 3)
    original = sync.sync_batches
    monkeypatch.setattr(
        sync, "sync_batches", lambda client, result=None, **kw: original(client, result, page_size=3, **kw)
    )


pytestmark = pytest.mark.django_db


def test_a_pass_with_running_batches_over_three_pages_makes_three_list_calls_and_no_retrieves(api, small_pages):
    add_batches(api, 20, "completed", newest_age=3600)
    running = add_batches(api, 8, "in_progress", newest_age=60)  # pages [r r r] [r r r] [r r c] [c c c]...
    one_pass()  # the first pass: the newest page, then the import of the rest
    assert Batch.objects.count() == 28 and Batch.objects.active().count() == 8
    api.server.received.clear()
    for batch_id in running:
        api.batches[batch_id]["request_counts"]["completed"] += 1  # every running batch moved on

    result = one_pass()

    assert len(list_calls(api)) == 3
    assert retrieves(api) == []
    assert result.changed == 8 and result.complete
    assert all(
        Batch.objects.get(batch_id=b).completed_requests == api.batches[b]["request_counts"]["completed"]
        for b in running
    )


def test_an_idle_pass_costs_one_list_call(api, small_pages):
    add_batches(api, 10, "completed", newest_age=3600)
    one_pass()
    api.server.received.clear()

    result = one_pass()

    assert len(list_calls(api)) == 1 and retrieves(api) == []
    assert result.changed == 0


def test_a_new_batch_above_the_mark_is_recorded_by_the_next_pass(api, small_pages):
    add_batches(api, 5, "completed", newest_age=3600)
    one_pass()
    newest = api.add("validating", record=False, created_at=NOW)["id"]

    result = one_pass()

    assert Batch.objects.filter(batch_id=newest).exists()
    assert result.changed == 1 and Batch.objects.count() == 6


def test_a_batch_that_finished_is_reported_as_became_final(api, small_pages):
    add_batches(api, 4, "completed", newest_age=3600)
    (running,) = add_batches(api, 1, "in_progress", newest_age=60)
    one_pass()
    api.batches[running].update(status="completed", completed_at=NOW)

    result = one_pass()

    assert result.became_final == [running]


def test_a_running_batch_too_deep_to_walk_to_is_retrieved_on_its_own(api, small_pages, monkeypatch):
    monkeypatch.setattr(sync, "MAX_WALK_PAGES", 2)
    (deep,) = add_batches(api, 1, "in_progress", newest_age=7200)
    add_batches(api, 12, "completed", newest_age=60)  # four pages above it
    one_pass()
    api.server.received.clear()

    one_pass()

    assert len(list_calls(api)) == 1
    assert retrieves(api) == [f"/batches/{deep}"]


def test_the_first_pass_records_the_newest_page_then_imports_the_rest(api, small_pages):
    ids = add_batches(api, 10, "completed", newest_age=60)

    result = one_pass()

    assert set(Batch.objects.values_list("batch_id", flat=True)) == set(ids)
    assert BatchSnapshot.objects.count() == 10
    # 10 batches in pages of 3: ceil(10 / 3) list calls, each cursor once.
    assert list_calls(api) == ["", ids[2], ids[5], ids[8]]
    assert result.imported == 7
    state = SyncState.objects.get(name=freshness.LIST_STATE)
    assert state.import_done_at is not None and state.imported == 10 and state.high_water_id == ids[0]


def test_an_interrupted_import_continues_from_its_cursor_and_imports_each_batch_once(api, small_pages):
    ids = add_batches(api, 15, "completed", newest_age=60)
    client = services.get_client()
    real_list = client.list_batches
    calls = {"left": 3}

    def dies_after_three_calls(**kwargs):
        if calls["left"] == 0:
            raise services.Unavailable("The worker was killed.")
        calls["left"] -= 1
        return real_list(**kwargs)

    client.list_batches = dies_after_three_calls
    outcome = sync.run_pass(force=True, client=client)
    assert outcome.error
    assert Batch.objects.count() == 9
    assert SyncState.objects.get(name=freshness.LIST_STATE).import_cursor == ids[8]

    del client.list_batches  # A new worker, with a client that works.
    one_pass(client=client)

    after = list_calls(api)
    import_cursors = [cursor for cursor in after if cursor]
    assert import_cursors == [ids[2], ids[5], ids[8], ids[11]]  # resumed at ids[8]: no page listed twice
    assert after.count("") == 2  # the top page, once per pass
    assert sorted(Batch.objects.values_list("batch_id", flat=True)) == sorted(ids)
    assert BatchSnapshot.objects.count() == 15
    state = SyncState.objects.get(name=freshness.LIST_STATE)
    assert state.imported == 15 and state.import_done_at is not None


def test_an_import_slice_ends_at_its_deadline_and_the_next_pass_goes_on(api, small_pages, monkeypatch):
    add_batches(api, 12, "completed", newest_age=60)
    monkeypatch.setattr(sync, "IMPORT_SLICE_SECONDS", 0.0)

    first = one_pass()
    assert first.imported == 3  # one page per slice
    assert freshness.list_freshness().importing

    for _ in range(3):
        one_pass()

    assert Batch.objects.count() == 12
    assert not freshness.list_freshness().importing


def test_it_adds_no_snapshot_when_nothing_changed_between_passes(api):
    api.add("in_progress", record=False)
    one_pass()
    seen_before = Batch.objects.get().last_seen_at

    result = one_pass()

    assert result.changed == 0 and BatchSnapshot.objects.count() == 1
    assert Batch.objects.get().last_seen_at > seen_before


def test_a_killed_loops_lease_is_taken_over_once_it_expires(api):
    api.add("in_progress", record=False)
    started = timezone.now()
    # A loop claimed the lease and died mid-walk: it never renews or releases it.
    assert SyncState.objects.claim_pass(
        freshness.LIST_STATE, "dead-loop", started, lease_seconds=sync.LEASE_SECONDS, due_before=started
    )

    before_expiry = sync.run_pass(holder="second-loop", now=started + timedelta(seconds=sync.LEASE_SECONDS - 1))
    after_expiry = sync.run_pass(holder="second-loop", now=started + timedelta(seconds=sync.LEASE_SECONDS + 1))

    assert not before_expiry.ran
    assert after_expiry.ran and Batch.objects.count() == 1
    assert SyncState.objects.get(name=freshness.LIST_STATE).lease_until is None  # released after the pass


def test_two_loops_do_not_pass_in_the_same_interval(api, settings):
    settings.BATCHBOARD_REFRESH_INTERVAL = 2.0
    settings.BATCHBOARD_HISTORY_INTERVAL = 60.0
    api.add("in_progress", record=False)
    now = timezone.now()

    first = sync.run_pass(holder="loop-a", now=now)
    second = sync.run_pass(holder="loop-b", now=now + timedelta(seconds=30))
    due = sync.run_pass(holder="loop-b", now=now + timedelta(seconds=61))

    assert first.ran and not second.ran and due.ran


def test_a_watched_list_is_refreshed_at_the_short_interval(api, settings, viewer_client):
    settings.BATCHBOARD_REFRESH_INTERVAL = 2.0
    settings.BATCHBOARD_HISTORY_INTERVAL = 60.0
    api.add("in_progress", record=False)
    assert sync.run_pass(holder="loop").ran

    viewer_client.get("/batches/", headers={"HX-Request": "true"})
    later = timezone.now() + timedelta(seconds=3)

    assert sync.run_pass(holder="loop", now=later).ran


def test_it_records_each_state_once_when_several_passes_run_at_once(api, transactional_db):
    for _ in range(6):
        api.add("in_progress", record=False)
    start = threading.Barrier(4)
    errors = []

    def forced_pass():
        start.wait()
        try:
            outcome = sync.run_pass(force=True, holder=sync.new_holder())
            if outcome.error:
                errors.append(outcome.error)
        except Exception as exc:  # Any error (e.g. "database is locked") fails the test below.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=forced_pass) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Batch.objects.count() == 6
    assert BatchSnapshot.objects.count() == 6


def test_a_pass_cut_short_by_the_budget_says_so_on_the_list(api, settings, viewer_client, small_pages, monkeypatch):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 2
    monkeypatch.setattr(budget, "clock", lambda: 1_800_000_000.0)  # one minute throughout: no new minute's budget
    add_batches(api, 10, "completed", newest_age=60)

    outcome = sync.run_pass(force=True)

    assert outcome.result.stopped == "budget" and len(list_calls(api)) == 2
    assert "budget" in outcome.describe()
    assert freshness.list_freshness().budget_limited


def _loop_until_recorded(count: int) -> None:
    """Run the sync loop in a thread until `count` batches are recorded (10 s at most), then stop it."""
    stop = threading.Event()
    loop = threading.Thread(target=sync.sync_loop, args=(stop,), kwargs={"wake_every": 0.05})
    loop.start()
    deadline = time.monotonic() + 10
    while Batch.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(timeout=10)
    assert not loop.is_alive()


def test_the_loop_passes_until_stopped(api, sync_log, transactional_db):
    api.add("in_progress", record=False)
    api.add("in_progress", record=False)
    _loop_until_recorded(2)

    assert Batch.objects.count() == 2
    assert any("sync pass: 1 page, 2 seen, 2 changed" in message for message in sync_log.messages)


def test_after_a_pass_that_recorded_a_change_the_loop_keeps_the_lists_figures_for_the_polls(
    api, sync_log, transactional_db
):
    api.add("in_progress", record=False)
    api.add("validating", record=False)
    api.add("failed", record=False)
    _loop_until_recorded(3)

    version = data_version()
    with CaptureQueriesContext(connection) as queries:
        running = list_figures.running(version).figures(None)
        settled = list_figures.settled(version, 2, list_figures.start_of_today(), DailySpend.day_of()).figures(None)

    assert {status: figures["count"] for status, figures in running.items()} == {"in_progress": 1, "validating": 1}
    assert {status: figures["count"] for status, figures in settled.items()} == {"failed": 1}
    assert not [query for query in queries.captured_queries if "batches_batch" in query["sql"]]  # kept by the loop


def test_the_loop_status_reports_heartbeat_duration_and_lag(api):
    assert not freshness.loop_status().alive
    api.add("in_progress", record=False)
    one_pass()

    status = freshness.loop_status()

    assert status.alive and status.heartbeat_at is not None
    assert status.last_pass_seconds is not None and 0 <= status.lag_seconds < 60


def test_the_api_failing_is_recorded_and_shown(api):
    api.list_reply = Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})

    outcome = sync.run_pass(force=True)

    assert "Cannot reach the OpenAI API" in outcome.error
    state = freshness.list_freshness()
    assert not state.ok and state.error_kind == "unavailable"


def test_the_command_runs_one_pass_and_logs_it(api, sync_log):
    for _ in range(3):
        api.add("completed", record=False)

    call_command("sync_batches")

    assert Batch.objects.count() == 3
    line = next(message for message in sync_log.messages if message.startswith("sync pass"))
    assert "1 page, 3 seen, 3 changed, 0 retrieved in" in line


def test_the_command_says_plainly_when_the_api_is_down_and_exits_non_zero(settings, sync_log):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0

    with pytest.raises(CommandError):
        call_command("sync_batches")

    assert any("Cannot reach the OpenAI API" in message for message in sync_log.messages)


def test_the_command_rejects_a_bad_interval():
    with pytest.raises(CommandError, match="--interval"):
        call_command("sync_batches", "--loop", "--interval", "0")


@pytest.mark.usefixtures("transactional_db")
def test_the_loop_command_stops_on_sigterm_with_status_0(sandbox_url, database_url):
    create_batches(1)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SANDBOX_URL": sandbox_url,
        "OPENAI_API_KEY": "",
        "OPENAI_MAX_RETRIES": "0",
    }
    command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "sync_batches", "--loop", "--interval", "0.2"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        output = _read_until(process, "sync pass", timeout=30)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in output + rest
    assert "Stopped." in rest
    assert Batch.objects.count() == 1


def _read_until(process, text, timeout):
    """stderr of `process` until a line contains `text` (the loop's first pass), within `timeout` seconds."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 0.5)
        if ready:
            line = process.stderr.readline()
            lines.append(line)
            if text in line or not line:
                break
    return "".join(lines)
