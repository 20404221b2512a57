"""`make run`: a quiet terminal (a line per change or error), and messages that name the real URL."""

import logging

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
