"""Keeping the history without anyone watching: sync passes and the sync loop against the sandbox over HTTP."""

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from batches import services, upstream
from batches.models import Batch, BatchSnapshot, SyncState

pytestmark = pytest.mark.usefixtures("sandbox_url")


def create_batches(count, *, speed=None):
    """`count` batches in the sandbox, newest last; `speed` fixes how fast they run (it is read at creation)."""
    if speed is not None:
        settings.SANDBOX_SPEED = speed
    client = services.get_client()
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]},
    }
    upload = client.upload_fileobj(_jsonl(line), filename="input.jsonl")
    return [client.create_batch(input_file_id=upload.id, endpoint="/v1/chat/completions") for _ in range(count)]


def _jsonl(*lines):
    import io

    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def counting_client():
    """A real client that notes every request it sends (method, path)."""
    client = services.get_client()
    calls = []
    client.session.hooks["response"] = [lambda response, *args, **kwargs: calls.append(response.request.path_url)]
    return client, calls


def list_calls(calls):
    return [path for path in calls if path.split("?")[0].endswith("/batches")]


@pytest.fixture
def sync_log(caplog):
    """The sync's log lines (the batches logger does not propagate to the root logger caplog listens on)."""
    logger = logging.getLogger("batches")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="batches")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_it_records_every_batch_on_the_first_pass_walking_every_page():
    created = create_batches(5, speed=1)
    client, calls = counting_client()

    result = upstream.sync_batches(client, page_size=2)

    assert (result.pages, result.seen, result.changed, result.complete) == (3, 5, 5, True)
    assert len(list_calls(calls)) == 3
    assert set(Batch.objects.values_list("batch_id", flat=True)) == {b.id for b in created}
    assert BatchSnapshot.objects.count() == 5
    newest = client.list_batches(limit=1).data[0].id
    assert SyncState.objects.get(name=upstream.LIST_STATE).high_water_id == newest


def test_it_stops_an_incremental_pass_below_where_the_last_complete_walk_began():
    create_batches(3, speed=1)
    wait_for_the_next_second()  # The API lists newest first by creation second; ties can come in any order.
    create_batches(1)
    client, calls = counting_client()
    upstream.sync_batches(client, page_size=2)
    newest = create_batches(1)[0]
    calls.clear()

    result = upstream.sync_batches(client, page_size=2)

    # Pages of [the two newest], [two from the older second, below the previous top]: the third is not needed.
    assert result.pages == 2
    assert len(list_calls(calls)) == 2
    assert result.retrieved == 1  # the known batch still running and not on those pages is refreshed on its own
    assert Batch.objects.filter(batch_id=newest.id).exists()
    assert Batch.objects.count() == 5


def wait_for_the_next_second():
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def test_it_finishes_an_interrupted_first_walk_on_the_next_pass():
    created = create_batches(5, speed=1)
    client, _ = counting_client()
    stop = threading.Event()
    stop.set()

    interrupted = upstream.sync_batches(client, page_size=2, stop=stop)
    assert (interrupted.pages, interrupted.complete) == (1, False)
    assert SyncState.objects.filter(name=upstream.LIST_STATE, high_water_id__gt="").count() == 0
    create_batches(1)

    upstream.sync_batches(client, page_size=2)

    # The older batches below the first page were not skipped because the newest ones were known.
    assert Batch.objects.count() == 6
    assert {b.id for b in created} <= set(Batch.objects.values_list("batch_id", flat=True))


def test_it_adds_no_snapshot_when_nothing_changed_between_passes():
    create_batches(3, speed=1)
    client, _ = counting_client()
    upstream.sync_batches(client)
    seen_before = dict(Batch.objects.values_list("batch_id", "last_seen_at"))

    result = upstream.sync_batches(client)

    assert result.changed == 0
    assert BatchSnapshot.objects.count() == 3
    assert all(row.last_seen_at > seen_before[row.batch_id] for row in Batch.objects.all())


def test_it_adds_a_snapshot_when_a_batch_advanced_between_passes():
    batch = create_batches(1, speed=3600)[0]  # about a second from validating to completed
    client, _ = counting_client()
    upstream.sync_batches(client)
    first = Batch.objects.get(batch_id=batch.id)
    deadline = time.monotonic() + 10
    while client.retrieve_batch(batch.id).status == first.status and time.monotonic() < deadline:
        time.sleep(0.05)

    result = upstream.sync_batches(client)

    assert result.changed == 1
    row = Batch.objects.get(batch_id=batch.id)
    assert row.status != first.status
    assert row.snapshots.first().status == first.status
    assert row.snapshots.count() == 2


def test_it_lets_one_of_two_loops_walk_in_an_interval():
    create_batches(2, speed=1)
    start = threading.Barrier(2)
    outcomes = []

    def one_pass():
        start.wait()
        try:
            outcomes.append(upstream.list_pass(lease_seconds=60))
        finally:
            connection.close()

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcome.ran for outcome in outcomes) == [False, True]
    assert "skipped" in next(o for o in outcomes if not o.ran).describe()


def test_it_records_each_state_once_when_several_walks_run_at_once():
    create_batches(6, speed=1)
    start = threading.Barrier(4)
    errors = []

    def forced_pass():
        start.wait()
        try:
            outcome = upstream.list_pass(force=True)
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


def test_the_loop_passes_until_stopped(sync_log):
    create_batches(2, speed=1)
    stop = threading.Event()
    loop = threading.Thread(target=upstream.sync_loop, args=(stop,), kwargs={"interval": 0.05})
    loop.start()
    deadline = time.monotonic() + 10
    while Batch.objects.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(timeout=10)

    assert not loop.is_alive()
    assert Batch.objects.count() == 2
    assert any("sync pass: 1 page, 2 seen, 2 changed" in message for message in sync_log.messages)


def test_the_command_runs_one_pass_and_logs_it(sync_log):
    create_batches(3, speed=1)

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


def test_the_loop_command_stops_on_sigterm_with_status_0(sandbox_url):
    create_batches(1, speed=1)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
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
