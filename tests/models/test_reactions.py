"""Reactions (batches.reactions) on the real task queue: announced by the one recording function for every path,
run once however often they are scheduled or enqueued and however many workers run, retried with backoff, failed
with their reason, and picked up again after their worker was killed."""

import os
import signal
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from batches import events, reactions
from batches.models import Batch, Reaction, record_batch, record_batches
from tests import reaction_tasks
from tests.conftest import completed, observation, process_environment


@pytest.fixture(autouse=True)
def _no_results_kept(settings):
    """Only the test steps react here: final batches' results are not kept."""
    settings.BATCHBOARD_ARCHIVE = "off"


@pytest.fixture
def effects(tmp_path, monkeypatch):
    path = tmp_path / "effects"
    monkeypatch.setenv("BATCHBOARD_TEST_EFFECTS", str(path))

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    lines.path = path
    return lines


@pytest.fixture
def announced():
    """Every signal of batches.events sent during the test, as (signal name, kwargs)."""
    sent = []

    def changed(sender, **kwargs):
        sent.append(("changed", {k: v for k, v in kwargs.items() if k not in ("signal", "connection_id")}))

    def final(sender, **kwargs):
        sent.append(("final", {k: v for k, v in kwargs.items() if k not in ("signal", "connection_id")}))

    events.batch_changed.connect(changed)
    events.batch_became_final.connect(final)
    yield sent
    events.batch_changed.disconnect(changed)
    events.batch_became_final.disconnect(final)


def test_every_recording_path_announces_new_and_changed_states_and_each_batch_that_became_final(tasks, announced):
    record_batch(observation("batch_a"))
    tasks.commit_callbacks()
    pk = Batch.objects.get().pk
    assert announced == [("changed", {"batch_pk": pk, "batch_id": "batch_a", "created": True, "historical": False})]

    announced.clear()
    record_batch(observation("batch_a"))  # the same state again: nothing new
    record_batch(completed("batch_a"))
    record_batch(observation("batch_a", processed=3))  # a late answer, older than what is stored
    tasks.commit_callbacks()
    assert [(name, kwargs["batch_id"], kwargs.get("created")) for name, kwargs in announced] == [
        ("changed", "batch_a", False),
        ("final", "batch_a", None),
    ]

    announced.clear()
    record_batches([completed("batch_b"), completed("batch_c"), observation("batch_d")], historical=True)  # bulk
    tasks.commit_callbacks()
    finals = [kwargs for name, kwargs in announced if name == "final"]
    assert [kwargs["batch_id"] for kwargs in finals] == ["batch_b", "batch_c"]
    assert all(kwargs["historical"] for _name, kwargs in announced)
    assert {kwargs["batch_pk"] for kwargs in finals} == set(
        Batch.objects.filter(batch_id__in=["batch_b", "batch_c"]).values_list("pk", flat=True)
    )


def test_nothing_is_announced_when_the_recording_rolls_back(tasks, announced):
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        record_batch(completed("batch_a"))
        raise RuntimeError("the rest of the page failed")

    tasks.commit_callbacks()
    assert announced == []


def test_a_reaction_runs_once_however_often_it_is_scheduled_or_enqueued(tasks, effects):
    batch = record_batch(completed())

    assert reactions.schedule("test_effect", batch.pk)
    assert not reactions.schedule("test_effect", batch.pk)
    assert tasks.drain() == 1
    reaction = Reaction.objects.get()
    reaction_tasks.effect.enqueue(reaction.pk)  # a duplicate enqueue, as a sweep may make
    assert tasks.drain() == 1

    assert effects() == [f"test_effect {reaction.pk}"]
    reaction.refresh_from_db()
    assert (reaction.state, reaction.tries, reaction.error) == ("done", 1, "")
    assert reactions.schedule("test_effect", batch.pk, attempt=1)  # another attempt is another reaction


def test_a_failing_reaction_is_retried_with_backoff_then_failed_with_its_reason_without_blocking_others(tasks, effects):
    hostile, fine = record_batch(completed("batch_hostile")), record_batch(completed("batch_fine"))
    reactions.schedule("test_failing", hostile.pk)
    reactions.schedule("test_effect", fine.pk)

    tasks.drain()

    failing = Reaction.objects.get(step="test_failing")
    assert Reaction.objects.get(step="test_effect").state == "done"
    assert (failing.state, failing.tries) == ("pending", 1)
    assert "line 3 of the file of batch batch_hostile is not JSON" in failing.error
    wait = (failing.run_after - timezone.now()).total_seconds()
    assert reactions.BACKOFF_BASE_SECONDS * 0.9 < wait <= reactions.BACKOFF_BASE_SECONDS * 1.2
    assert tasks.drain() == 0  # not due yet
    waits = [wait]
    while failing.state == "pending":
        tasks.advance(reactions.BACKOFF_MAX_SECONDS * 1.2)
        assert tasks.drain() == 1
        failing.refresh_from_db()
        if failing.state == "pending":
            waits.append((failing.run_after - timezone.now()).total_seconds() + reactions.BACKOFF_MAX_SECONDS * 1.2)

    assert (failing.state, failing.tries) == ("failed", reactions.MAX_TRIES)
    assert failing.error == "ValueError: line 3 of the file of batch batch_hostile is not JSON"
    assert failing.finished_at is not None
    assert waits == sorted(waits)  # each wait at least as long as the one before
    assert tasks.waiting() == 0
    assert effects() == [f"test_effect {Reaction.objects.get(step='test_effect').pk}"]


def test_a_reaction_that_asks_to_wait_is_not_counted_as_a_try(tasks):
    reactions.schedule("test_waiting", record_batch(completed()).pk)

    tasks.drain()

    reaction = Reaction.objects.get()
    assert (reaction.state, reaction.tries, reaction.error) == ("pending", 0, "the history import has not finished")
    assert reaction.run_after > timezone.now() + timedelta(seconds=50)
    assert tasks.waiting() == 1  # its task is back on the queue, due when the reaction is


def test_a_reaction_whose_task_was_lost_is_enqueued_again_by_the_sweep(tasks, effects):
    batch = record_batch(completed())
    long_ago = timezone.now() - reactions.LOST_AFTER - timedelta(minutes=1)
    reaction = Reaction.objects.create(batch=batch, step="test_effect", run_after=long_ago, enqueued_at=long_ago)

    assert reactions.sweep() == 1
    assert reactions.sweep() == 0  # enqueued just now: not lost again
    tasks.drain()

    assert effects() == [f"test_effect {reaction.pk}"]


@pytest.mark.django_db(transaction=True)
def test_two_workers_claiming_one_reaction_at_once_run_it_once(effects):
    batch = record_batch(completed())
    reactions.schedule("test_effect", batch.pk)
    reaction = Reaction.objects.get()
    start = threading.Barrier(2)
    ran = []

    def worker():
        try:
            start.wait()
            ran.append(reactions.run(reaction.pk, reaction_tasks._write_effect))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(ran) == [False, True]
    assert effects() == [f"test_effect {reaction.pk}"]


def _db_worker(processes, database_url, effects, name, *extra):
    command = [sys.executable, "manage.py", "db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.05"]
    environment = process_environment(database_url, BATCHBOARD_TEST_EFFECTS=str(effects.path))
    return processes.start(name, [*command, *extra], environment)


def test_two_worker_processes_run_each_reaction_once_when_every_task_is_enqueued_twice(
    database_url, processes, effects
):
    ids = []
    for n in range(20):
        reactions.schedule("test_effect", record_batch(completed(f"batch_{n}")).pk)
    for reaction in Reaction.objects.all():
        reaction_tasks.effect.enqueue(reaction.pk)
        ids.append(reaction.pk)

    workers = [_db_worker(processes, database_url, effects, f"worker-{n}", "--batch") for n in range(2)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, processes.output(worker)

    assert sorted(effects()) == sorted(f"test_effect {pk}" for pk in ids)
    assert set(Reaction.objects.values_list("state", "tries")) == {("done", 1)}


def test_a_killed_workers_task_is_picked_up_again_and_runs_once(database_url, processes, effects):
    reactions.schedule("test_gated", record_batch(completed()).pk)
    reaction = Reaction.objects.get()
    started = effects.path.with_suffix(".started")

    first = _db_worker(processes, database_url, effects, "killed-worker")
    deadline = time.monotonic() + 60
    while not started.exists():
        assert first.poll() is None and time.monotonic() < deadline, processes.output(first)
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    reaction.refresh_from_db()
    assert reaction.state == "running"  # the killed worker's claim stays until its lease expires

    assert reactions.sweep() == 0  # the lease has not expired yet: nothing to pick up
    assert reactions.sweep(now=reaction.lease_until + timedelta(seconds=1)) == 1
    effects.path.with_suffix(".gate").touch()
    second = _db_worker(processes, database_url, effects, "second-worker", "--batch")
    assert second.wait(timeout=120) == 0, processes.output(second)

    assert effects() == [f"test_gated {reaction.pk}"]
    reaction.refresh_from_db()
    assert (reaction.state, reaction.tries) == ("done", 2)


def test_a_receivers_database_error_never_costs_the_other_batches_their_reactions(tasks, settings):
    from django.db import DatabaseError

    settings.BATCHBOARD_ARCHIVE = "new"  # the results app schedules keep_results for each final batch
    failed = []

    def flaky(sender, batch_id, **kwargs):
        if batch_id == "batch_b" and not failed:
            failed.append(batch_id)
            raise DatabaseError("the database went away for a moment")

    events.batch_became_final.connect(flaky)
    try:
        record_batches([completed("batch_a"), completed("batch_b"), completed("batch_c")])
        tasks.commit_callbacks()
    finally:
        events.batch_became_final.disconnect(flaky)

    assert failed == ["batch_b"]
    kept = Reaction.objects.filter(step="keep_results").values_list("batch__batch_id", flat=True)
    assert sorted(kept) == ["batch_a", "batch_b", "batch_c"]
    assert tasks.waiting() == 3  # each enqueued once, after the commit
