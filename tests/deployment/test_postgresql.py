"""What only PostgreSQL can show: real concurrent writers from several processes, the list's lease shared by two
sync loops (one killed), and NUL bytes, which PostgreSQL text refuses."""

import io
import json
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.core.signals import request_started
from django.test import Client, override_settings

from batches import services
from batches.models import Batch, BatchSnapshot
from tests.conftest import process_environment

pytestmark = pytest.mark.postgresql

CREATED = 1_760_000_000
RECORD_SCRIPT = """
import json, random, sys, time
import django
django.setup()
from batches import services
from batches.models import record_batch
payloads, seed, start_at = json.load(open(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3])
random.Random(seed).shuffle(payloads)
time.sleep(max(start_at - time.time(), 0))
for payload in payloads:
    record_batch(services.ApiBatch.from_api(payload))
"""


def _payload(batch_id: str, processed: int, total: int = 12) -> dict:
    done = processed == total
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": "completed" if done else "in_progress",
        "output_file_id": "file-out" if done else None,
        "error_file_id": None,
        "created_at": CREATED,
        "in_progress_at": CREATED + 5,
        "finalizing_at": CREATED + 50 if done else None,
        "completed_at": CREATED + 60 if done else None,
        "expires_at": CREATED + 86_400,
        "request_counts": {"total": total, "completed": processed, "failed": 0},
        "metadata": {},
    }


def test_several_processes_recording_the_same_batches_keep_each_state_once(database_url, tmp_path):
    batch_ids = [f"batch_procs_{n}" for n in range(3)]
    states = tmp_path / "states.json"
    states.write_text(json.dumps([_payload(b, processed) for b in batch_ids for processed in range(13)]))
    start_at = time.time() + 3  # every process has connected and imported Django by then
    environment = process_environment(database_url)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", RECORD_SCRIPT, str(states), str(seed), str(start_at)],
            env=environment,
            cwd=settings.BASE_DIR,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    errors = [writer.communicate(timeout=120)[1] for writer in writers]

    assert [writer.returncode for writer in writers] == [0, 0, 0, 0], errors
    assert Batch.objects.count() == 3
    for row in Batch.objects.all():
        assert row.status == "completed" and row.completed_requests == 12  # the newest state won
        history = list(row.snapshots.values_list("completed_requests", "payload_hash"))
        assert len({digest for _, digest in history}) == len(history)  # no duplicate snapshot
        processed = [count for count, _ in history]
        assert processed == sorted(processed)  # the history never goes backwards


@pytest.fixture
def list_walks():
    """The times at which the sandbox served the first page of the list: each one is a walk starting."""
    walks = []

    def _record(sender, environ=None, **kwargs):
        environ = environ or {}
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and environ.get("PATH_INFO", "").endswith("/sandbox/v1/batches")
            and "after=" not in environ.get("QUERY_STRING", "")
        ):
            walks.append(time.monotonic())

    request_started.connect(_record, weak=False, dispatch_uid="postgresql-tests-list-walks")
    yield walks
    request_started.disconnect(dispatch_uid="postgresql-tests-list-walks")


def test_two_sync_loops_share_one_walk_per_interval_and_one_takes_over_when_the_other_is_killed(
    sandbox_url, database_url, list_walks, processes
):
    client = services.get_client()
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}\n'
    upload = client.upload_fileobj(io.BytesIO(line), filename="input.jsonl")
    client.create_batch(input_file_id=upload.id, endpoint="/v1/chat/completions")
    interval = 1.0
    environment = process_environment(
        database_url,
        SANDBOX_URL=sandbox_url,
        OPENAI_MAX_RETRIES="0",
        BATCHBOARD_HISTORY_INTERVAL=str(interval),  # a pass is due every second even with nobody watching
        BATCHBOARD_REFRESH_INTERVAL=str(interval),
    )
    command = [sys.executable, "manage.py", "sync_batches", "--loop", "--interval", str(interval)]
    first, second = (processes.start(f"loop{n}", command, environment) for n in range(2))

    _wait_for(lambda: list_walks, timeout=60)
    started = time.monotonic()
    time.sleep(5)
    first.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(5)
    ended = time.monotonic()

    both = [walk for walk in list_walks if started <= walk < killed]
    alone = [walk for walk in list_walks if killed <= walk < ended]
    assert 2 <= len(both) <= (killed - started) / interval + 1  # two loops, one walk per interval
    assert 2 <= len(alone) <= (ended - killed) / interval + 1  # the survivor took the lease over
    assert second.poll() is None
    assert Batch.objects.count() == 1 and BatchSnapshot.objects.count() >= 1


def _wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s")
        time.sleep(0.1)


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["q=a%00b", "q=%00", "model=gpt%00", "endpoint=%00", "status=%00"])
def test_a_nul_byte_in_the_list_parameters_is_harmless(viewer_client, query):
    # Nothing upstream: the list shows the cache.
    with override_settings(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_MAX_RETRIES=0):
        page = viewer_client.get(f"/batches/?{query}")
        fragment = viewer_client.get(f"/batches/?{query}", headers={"HX-Request": "true"})

    assert page.status_code == 200
    assert fragment.status_code in (200, 286)


@pytest.mark.django_db
def test_a_nul_byte_in_a_batch_id_or_a_login_is_refused_cleanly(viewer_client):
    assert viewer_client.get("/batches/batch_a%00b/").status_code == 404

    response = Client().post("/accounts/login/", {"username": "viewer\x00", "password": "pw-viewer"})

    assert response.status_code == 200  # the form again, with its error
    assert "_auth_user_id" not in response.wsgi_request.session
