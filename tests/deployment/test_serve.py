"""`make run`: a quiet terminal (a line per change or error), and messages that name the real URL."""

import logging
import signal
import sys
import time

import pytest
from django.core.management import call_command

from batches.management.commands.serve import _OnlyFailedRequests

# What `make run` prints: a second database changes nothing.
pytestmark = pytest.mark.once


def _request_line(path: str, status: int) -> logging.LogRecord:
    record = logging.LogRecord(
        "django.server", logging.INFO, __file__, 1, '"%s" %s %s', (f"GET {path} HTTP/1.1", str(status), "12"), None
    )
    record.status_code = status
    return record


def test_it_shows_only_failed_requests_at_the_default_verbosity():
    quiet = _OnlyFailedRequests()

    assert not quiet.filter(_request_line("/sandbox/v1/batches?limit=100", 200))
    assert not quiet.filter(_request_line("/batches/", 200))
    assert not quiet.filter(_request_line("/static/css/base.css", 304))
    assert quiet.filter(_request_line("/sandbox/v1/batches?limit=100", 500))
    assert quiet.filter(_request_line("/batches/batch_nope/", 404))


@pytest.mark.django_db
def test_the_first_run_message_names_the_real_url(capsys):
    call_command("ensure_admin", "--url", "http://127.0.0.1:8001/")

    assert "Created a local admin account for http://127.0.0.1:8001/" in capsys.readouterr().out


def test_make_run_runs_a_task_worker_beside_the_sync_loop_and_stops_cleanly_on_ctrl_c(
    database_url, processes, tmp_path, settings
):
    from batches import reactions
    from batches.models import Reaction, record_batch
    from tests import reaction_tasks  # noqa: F401  (registers the test steps)
    from tests.conftest import completed, free_port, process_environment, wait_until_serving

    settings.BATCHBOARD_ARCHIVE = "off"  # only the test's reaction follows the batch
    effects = tmp_path / "effects"
    port = free_port()
    environment = process_environment(database_url, BATCHBOARD_TEST_EFFECTS=str(effects), BATCHBOARD_ARCHIVE="off")
    serve = processes.start("serve", [sys.executable, "manage.py", "serve", "--port", str(port)], environment)
    wait_until_serving(f"http://127.0.0.1:{port}/healthz")

    reactions.schedule("test_effect", record_batch(completed()).pk)  # committed: a worker may take it
    deadline = time.monotonic() + 60
    while not effects.exists():
        assert time.monotonic() < deadline and serve.poll() is None, processes.output(serve)
        time.sleep(0.1)
    serve.send_signal(signal.SIGINT)

    assert serve.wait(timeout=30) == 0, processes.output(serve)
    assert effects.read_text().splitlines() == [f"test_effect {Reaction.objects.get().pk}"]
    assert Reaction.objects.get().state == "done"
