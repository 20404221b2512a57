"""`make run`: a quiet terminal (a line per change or error), and messages that name the real URL."""

import logging

import pytest
from django.core.management import call_command

from batches.management.commands.serve import _QuietSandboxRequests

# What `make run` prints: a second database changes nothing.
pytestmark = pytest.mark.once


def _request_line(path: str, status: int) -> logging.LogRecord:
    record = logging.LogRecord(
        "django.server", logging.INFO, __file__, 1, '"%s" %s %s', (f"GET {path} HTTP/1.1", str(status), "12"), None
    )
    record.status_code = status
    return record


def test_it_drops_the_sync_loops_successful_sandbox_calls_and_keeps_the_rest():
    quiet = _QuietSandboxRequests()

    assert not quiet.filter(_request_line("/sandbox/v1/batches?limit=100", 200))
    assert quiet.filter(_request_line("/sandbox/v1/batches?limit=100", 500))
    assert quiet.filter(_request_line("/batches/", 200))


@pytest.mark.django_db
def test_the_first_run_message_names_the_real_url(capsys):
    call_command("ensure_admin", "--url", "http://127.0.0.1:8001/")

    assert "Created a local admin account for http://127.0.0.1:8001/" in capsys.readouterr().out
