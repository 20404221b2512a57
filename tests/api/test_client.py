"""The command-line client (batchboard_client.py), run as a user runs it (`python -m batchboard_client` in a
process of its own) against the live test server, whose sandbox plays the OpenAI API and whose task worker keeps
results: submit and wait, results of the failed lines as CSV, retry them, cancel, and each error said plainly."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest
import requests
from django.conf import settings as django_settings

from tests.api.conftest import make_token

# The client is a program that talks HTTP: the API answering it is tested on both databases by the other tests of
# tests/api/, so its own tests run once (see tests/conftest.py).
pytestmark = pytest.mark.once

CHAT = "/v1/chat/completions"


def _jsonl(count: int) -> bytes:
    lines = []
    for number in range(1, count + 1):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {number}."}]}
        lines.append(json.dumps({"custom_id": f"request-{number}", "method": "POST", "url": CHAT, "body": body}))
    return ("\n".join(lines) + "\n").encode()


class Cli:
    def __init__(self, url: str, token: str):
        self.environment = {k: v for k, v in os.environ.items() if not k.startswith("BATCHBOARD_")}
        self.environment.update(BATCHBOARD_URL=url, BATCHBOARD_TOKEN=token)

    def __call__(self, *arguments: str, environment: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "batchboard_client", *arguments],
            cwd=django_settings.BASE_DIR,
            env=self.environment if environment is None else environment,
            capture_output=True,
            timeout=120,
        )


@pytest.fixture
def cli(live_server, sandbox_url, operator):
    return Cli(live_server.url, make_token(operator, name="cli")[1])


def _stdout_json(process) -> dict:
    assert process.returncode == 0, process.stderr.decode()
    return json.loads(process.stdout)


def _wait_for_kept_results(url: str, token: str, batch_id: str) -> None:
    """The task worker keeps a final batch's results seconds after it is recorded final."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = requests.get(
            f"{url}/api/v1/batches/{batch_id}/final", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        if answer.status_code == 200:
            return
        assert answer.json()["error"]["code"] == "results_not_ready", answer.content
        time.sleep(0.2)
    pytest.fail(f"the results of {batch_id} were not kept within 60 s")


@pytest.mark.django_db(transaction=True)
def test_it_submits_waits_exports_the_failed_lines_retries_and_cancels(cli, settings, tmp_path, task_worker):
    settings.SANDBOX_SPEED = 1_000_000.0  # the sandbox reads it at creation: this batch runs in moments
    requests_file = tmp_path / "requests.jsonl"
    requests_file.write_bytes(_jsonl(3))

    submitted = cli(
        "submit",
        str(requests_file),
        "--description",
        "from the command line",
        "--metadata",
        "sandbox_scenario=all_fail",
        "--wait",
        "--interval",
        "0.1",
    )

    batch = _stdout_json(submitted)
    assert batch["status"] == "completed" and batch["description"] == "from the command line"
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert f"Created {batch['id']}" in submitted.stderr.decode()
    assert "completed (0 completed, 3 failed of 3)" in submitted.stderr.decode()
    status = _stdout_json(cli("status", batch["id"]))
    assert (status["id"], status["status"]) == (batch["id"], "completed")

    _wait_for_kept_results(cli.environment["BATCHBOARD_URL"], cli.environment["BATCHBOARD_TOKEN"], batch["id"])
    exported = cli("results", batch["id"], "--failed", "--csv")
    assert exported.returncode == 0, exported.stderr.decode()
    rows = list(csv.reader(io.StringIO(exported.stdout.decode("utf-8-sig"))))
    assert rows[0][:3] == ["line", "custom_id", "outcome"]
    assert [(row[1], row[2]) for row in rows[1:]] == [(f"request-{n}", "failed") for n in (1, 2, 3)]

    settings.SANDBOX_SPEED = 1.0  # the retry stays running, to be cancelled
    retried = cli("retry", batch["id"], "--failed")
    retry = _stdout_json(retried)
    assert retry["lineage"]["retry_of"] == batch["id"] and retry["lineage"]["job"] == batch["id"]
    assert "a retry of 3 lines (every failed line)" in retried.stderr.decode()

    cancelled = _stdout_json(cli("cancel", retry["id"]))
    assert cancelled["id"] == retry["id"] and cancelled["cancel_requested_at"] is not None
    again = cli("cancel", retry["id"])
    assert again.returncode == 0  # a cancel asked before is no error


@pytest.mark.django_db(transaction=True)
def test_it_says_what_the_api_refused_without_a_traceback(cli, tmp_path, sandbox_url):
    bad_token = {**cli.environment, "BATCHBOARD_TOKEN": "bb_not_a_live_token"}
    refused = cli("status", "batch_abc", environment=bad_token)
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "Error: This API token is unknown, expired or revoked. (HTTP 401)"

    missing = cli("status", "batch_nothing")
    assert missing.returncode == 1 and "There is no batch batch_nothing" in missing.stderr.decode()

    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(_jsonl(1) + b'{"custom_id": "request-2", "method": "POST"\n' + _jsonl(1).replace(b"-1", b"-3"))
    invalid = cli("submit", str(broken))
    stderr = invalid.stderr.decode()
    assert invalid.returncode == 1 and invalid.stdout == b""
    assert stderr.startswith("Error: The batch was not created") and "(HTTP 400)" in stderr
    assert "\n  line 2: " in stderr
    for process in (refused, missing, invalid):
        assert b"Traceback" not in process.stderr
    listed = requests.get(f"{sandbox_url}/batches", headers={"Authorization": "Bearer sk-sandbox"}, timeout=10)
    assert listed.json()["data"] == []  # nothing was sent


def test_it_asks_for_its_configuration_when_it_is_not_set():
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BATCHBOARD_")}
    environment["BATCHBOARD_URL"] = "http://127.0.0.1:9"

    unset = Cli("", "")("status", "batch_abc", environment=environment)

    assert unset.returncode == 2
    assert unset.stderr.decode().startswith("Set BATCHBOARD_TOKEN: ")
    assert b"Traceback" not in unset.stderr
