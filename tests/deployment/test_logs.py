"""BATCHBOARD_LOG_FORMAT=json: one JSON object per line, for requests and sync passes, never with the API key."""

import io
import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from batches.log_format import JsonFormatter
from tests.conftest import process_environment

# The shape of log lines: a second database changes nothing.
pytestmark = pytest.mark.once

KEY = "sk-proj-a-key-that-must-never-be-logged-0123456789"


@pytest.fixture
def request_log(settings):
    """What the request logger writes with the JSON formatter, as BATCHBOARD_LOG_FORMAT=json configures it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("batches.requests")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.django_db
def test_each_request_is_one_json_line_with_its_id_user_path_status_and_duration(viewer_client, request_log, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0

    response = viewer_client.get("/batches/?q=nightly", headers={"X-Request-ID": "proxy-1234abcd"})
    anonymous = viewer_client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})

    lines = [json.loads(line) for line in request_log.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == response["X-Request-ID"] == "proxy-1234abcd"
    assert (first["user"], first["method"], first["path"], first["status"]) == ("viewer", "GET", "/batches/", 200)
    assert first["duration_ms"] > 0 and first["level"] == "INFO" and first["logger"] == "batches.requests"
    assert second["request_id"] == anonymous["X-Request-ID"] and len(second["request_id"]) == 32  # a new one
    assert second["path"] == "/healthz"


def test_the_key_is_struck_from_any_line_whatever_logged_it(settings):
    settings.OPENAI_API_KEY = KEY
    record = logging.LogRecord("batches.x", logging.ERROR, __file__, 1, "sent %s", (f"Bearer {KEY}",), None)

    line = JsonFormatter().format(record)

    assert KEY not in line and json.loads(line)["message"] == "sent Bearer [redacted]"


@pytest.mark.parametrize("key", ["sk-sandbox", KEY])
def test_the_sync_loop_logs_each_pass_as_json_without_the_key(sandbox_url, database_url, key):
    environment = process_environment(
        database_url, BATCHBOARD_LOG_FORMAT="json", OPENAI_API_KEY=key, OPENAI_BASE_URL=sandbox_url
    )
    environment["OPENAI_MAX_RETRIES"] = "0"
    loop = subprocess.Popen(
        [sys.executable, "manage.py", "sync_batches", "--loop", "--interval", "0.3"],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines = []
        while not any('"pass_number"' in line for line in lines) and time.monotonic() < deadline:
            lines.append(loop.stderr.readline())
        loop.send_signal(signal.SIGTERM)
        lines += loop.communicate(timeout=30)[1].splitlines()
    finally:
        loop.kill()

    entries = [json.loads(line) for line in lines if line.strip()]
    passes = [entry for entry in entries if "pass_number" in entry]
    assert passes and passes[0]["pass_number"] == 1  # the loop's first pass runs at once
    for entry in passes:
        assert {"pages", "calls", "changed", "outcome", "seconds"} <= set(entry)
    if key == KEY:  # the sandbox refuses it: the error is logged, the key is not
        assert passes[0]["outcome"] == "failed" and "rejected the configured API key" in passes[0]["message"]
    else:
        assert passes[0]["outcome"] == "ran" and passes[0]["calls"] == passes[0]["pages"] + passes[0]["retrieved"]
    assert key not in "".join(lines)
    assert entries[-1]["message"] == "Stopped."
