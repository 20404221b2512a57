"""Two installs of batchboard watching one organisation: two databases, one upstream (the sandbox under a live
server), automatic retries on in both. Each parent is retried exactly once per attempt, whichever install keeps its
results first: the second install sees the first one's retry only through the upstream list.

The first install is this test process (the test database, its tasks drained here); the second is a set of
`manage.py` processes on a SQLite file of their own (migrate, a sync pass, keeping results, a task worker).
"""

import sqlite3
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.db.models import F
from django.utils import timezone

from audit.models import AuditEvent
from batches import services, sync
from batches.models import Batch, SyncState
from results import archive
from retries import auto
from retries.models import AutoRetry, AutoRetryState
from sandbox import results as sandbox_results
from sandbox.models import SandboxBatch
from tests.conftest import input_line, kept_batch, process_environment

CHAT = "/v1/chat/completions"
DAY = 86_400


def _failing_in_sandbox(count: int, prefix: str) -> list[str]:
    """custom_ids the sandbox answers with a 500 every time (its failures are chosen by a hash of the id)."""
    ids = (f"{prefix}-{n}" for n in range(100_000))
    return [c for c in ids if (failure := sandbox_results._random_failure(c)) and failure["status"] == 500][:count]


def _parent_in_sandbox(tmp_path, name: str) -> str:
    """A finished batch whose lines all failed with a 500, asking for one automatic retry."""
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(input_line(c, n) + b"\n" for n, c in enumerate(_failing_in_sandbox(3, name))))
    client = services.get_client()
    uploaded = client.upload_file(path)
    batch_id = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT, metadata={"batchboard_auto_retry": "1"}).id
    SandboxBatch.objects.filter(pk=batch_id).update(created=F("created") - 10 * DAY)
    return batch_id


def _keep_here(batch_id: str, tasks) -> None:
    """This install keeps the batch's results (as a results page's first open asks): a task worker fetches them,
    and the automatic retry follows."""
    archive.keep(Batch.objects.get(batch_id=batch_id))
    tasks.drain()


class SecondInstall:
    """Another batchboard on its own database, pointed at the same upstream."""

    def __init__(self, tmp_path, sandbox_url: str):
        self.database = tmp_path / "second-install.sqlite3"
        self.environment = process_environment(
            f"sqlite:///{self.database}",
            SANDBOX_URL=sandbox_url,
            OPENAI_API_KEY="",
            OPENAI_MAX_RETRIES="0",
            BATCHBOARD_ARCHIVE="all",
        )

    def manage(self, *arguments: str) -> str:
        command = [sys.executable, str(django_settings.BASE_DIR / "manage.py"), *arguments]
        done = subprocess.run(command, env=self.environment, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(arguments)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def auto_retries(self) -> dict[str, tuple[str, str]]:
        """{parent id: (state, retry id)} of its automatic retries, read from its own database."""
        with sqlite3.connect(self.database) as db:
            rows = db.execute(
                "SELECT b.batch_id, a.state, a.retry_batch_id FROM retries_autoretry a "
                "JOIN batches_batch b ON b.id = a.parent_id"
            ).fetchall()
        return {parent: (state, retry) for parent, state, retry in rows}


def _children(sandbox_url: str) -> dict[str, list[tuple[str, str]]]:
    """{parent id: [(child id, attempt)]} of every batch upstream that names a parent."""
    page = services.get_client().list_batches(limit=100)
    children: dict[str, list[tuple[str, str]]] = {}
    for batch in page.data:
        if parent := batch.metadata.get("batchboard_retry_of"):
            children.setdefault(parent, []).append((batch.id, batch.metadata.get("batchboard_attempt", "")))
    return children


@pytest.mark.django_db
def test_two_installs_never_duplicate_a_retry(sandbox_url, settings, tmp_path, tasks):
    settings.SANDBOX_SPEED = 1.0
    settings.BATCHBOARD_ARCHIVE = "on-open"  # this install keeps each parent when the test says
    first_parent = _parent_in_sandbox(tmp_path, "first")
    second_parent = _parent_in_sandbox(tmp_path, "second")

    # The first install sees both parents finished, and keeps the first one's results: it retries it.
    assert not sync.run_pass(force=True).error
    assert SyncState.objects.get(name=sync.LIST_STATE).import_done_at is not None
    _keep_here(first_parent, tasks)
    first_retry = AutoRetry.objects.get(parent__batch_id=first_parent)
    assert first_retry.state == AutoRetryState.SUBMITTED

    # A second install attaches to the organisation: it imports the history, keeps both parents' results and runs
    # its reactions. It finds the first install's retry upstream, and retries only the second parent.
    second = SecondInstall(tmp_path, sandbox_url)
    second.manage("migrate", "--noinput")
    second.manage("sync_batches")
    second.manage("archive_results", "--limit", "20")
    second.manage("db_worker", "--batch", "--no-startup-delay", "--no-reload")
    made_there = second.auto_retries()
    assert made_there[first_parent] == (AutoRetryState.FOUND, first_retry.retry_batch_id)
    assert made_there[second_parent][0] == AutoRetryState.SUBMITTED

    # Now the first install keeps the second parent's results: it finds the second install's retry upstream.
    _keep_here(second_parent, tasks)
    found_here = AutoRetry.objects.get(parent__batch_id=second_parent)
    assert (found_here.state, found_here.retry_batch_id) == (AutoRetryState.FOUND, made_there[second_parent][1])

    children = _children(sandbox_url)
    assert children == {
        first_parent: [(first_retry.retry_batch_id, "1")],
        second_parent: [(made_there[second_parent][1], "1")],
    }


@pytest.mark.django_db
def test_two_installs_sending_at_the_same_moment_keep_the_first_retry_and_cancel_the_other(
    sandbox_url, settings, tmp_path, tasks, monkeypatch
):
    settings.SANDBOX_SPEED = 1.0
    SyncState.objects.update_or_create(name=sync.LIST_STATE, defaults={"import_done_at": timezone.now()})
    parent = kept_batch({"r-1": 429, "r-2": 500}, tmp_path, metadata={"batchboard_auto_retry": "1"})
    other = {}
    looked = auto._existing_child

    def other_install_sends_right_after_our_look(batch, attempt, **kwargs):
        found = looked(batch, attempt, **kwargs)
        if not other:  # our first look found nothing; the other install, which looked too, sends now
            path = tmp_path / "other.jsonl"
            path.write_bytes(input_line("r-1", 0) + b"\n")
            client = services.get_client()
            claim = {"batchboard_retry_of": batch.batch_id, "batchboard_job": batch.batch_id, "batchboard_attempt": "1"}
            other["id"] = client.create_batch(
                input_file_id=client.upload_file(path).id, endpoint=CHAT, metadata=claim
            ).id
            SandboxBatch.objects.filter(pk=other["id"]).update(created=F("created") - 1, created_at=F("created_at") - 1)
        return found

    monkeypatch.setattr(auto, "_existing_child", other_install_sends_right_after_our_look)
    tasks.drain()

    note = AutoRetry.objects.get(parent=parent)
    assert (note.state, note.retry_batch_id) == (AutoRetryState.FOUND, other["id"])
    upstream = {batch.id: batch.status for batch in services.get_client().list_batches(limit=100).data}
    ours = next(batch_id for batch_id in upstream if batch_id != other["id"])
    assert upstream[other["id"]] not in ("cancelling", "cancelled")
    assert upstream[ours] in ("cancelling", "cancelled")
    assert f"{ours}, sent at the same moment by this install, was cancelled" in note.problem
    assert AuditEvent.objects.filter(action="cancel", outcome="ok", batch_id=ours).exists()
