"""record_batch: the one recording function keeps the latest state and each distinct state, even under races."""

import random
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from batches.models import Batch, BatchSnapshot, payload_digest, progress_key, record_batch
from tests.conftest import CREATED, completed, observation


@pytest.mark.django_db
class TestRecordBatch:
    def test_it_records_a_new_batch_with_its_first_snapshot(self):
        row = record_batch(observation(processed=3))
        assert row.status == "in_progress"
        assert (row.total_requests, row.completed_requests, row.failed_requests) == (10, 3, 0)
        assert row.endpoint == "/v1/chat/completions"
        assert not row.is_terminal
        assert "nightly eval" in row.search_text and "file-in" in row.search_text
        assert [s.completed_requests for s in row.snapshots.all()] == [3]

    def test_it_adds_no_snapshot_for_an_identical_observation_but_notes_when_it_was_seen(self):
        first = timezone.now()
        record_batch(observation(processed=3), observed_at=first)
        row = record_batch(observation(processed=3), observed_at=first + timedelta(seconds=5))
        assert BatchSnapshot.objects.count() == 1
        row.refresh_from_db()
        assert row.last_seen_at == first + timedelta(seconds=5)
        assert row.last_changed_at == first

    def test_it_adds_a_snapshot_for_each_new_state_in_order(self):
        for processed in (0, 4, 10):
            record_batch(observation(processed=processed))
        row = record_batch(completed())
        assert row.status == "completed" and row.is_terminal and row.output_file_id == "file-out"
        assert row.finished_at is not None
        states = [(s.status, s.completed_requests) for s in row.snapshots.all()]
        assert states == [("in_progress", 0), ("in_progress", 4), ("in_progress", 10), ("completed", 10)]

    def test_it_never_lets_a_late_older_observation_overwrite_a_newer_state(self):
        record_batch(observation(processed=7))
        row = record_batch(observation(processed=2))  # A slow request that started earlier answers last.
        assert row.completed_requests == 7
        record_batch(completed())
        row = record_batch(observation(processed=10))
        row.refresh_from_db()
        assert row.status == "completed"
        assert [s.completed_requests for s in row.snapshots.all()] == [7, 10]

    def test_it_treats_empty_and_null_file_ids_as_the_same_state(self):
        record_batch(completed(error_file_id=""))
        row = record_batch(completed(error_file_id=None))
        assert BatchSnapshot.objects.count() == 1
        assert row.error_file_id == ""
        assert row.api.error_file_id is None
        assert payload_digest({"id": "b", "output_file_id": ""}) == payload_digest({"id": "b", "output_file_id": None})
        assert payload_digest({"id": "b", "output_file_id": "x"}) != payload_digest({"id": "b", "output_file_id": None})

    def test_it_orders_observations_by_timestamps_then_counts_then_tokens(self):
        validating = observation(status="validating", total=0)
        running = observation(processed=1)
        with_usage = observation(processed=1, usage={"total_tokens": 50})
        assert progress_key(validating) < progress_key(running) < progress_key(with_usage) < progress_key(completed())

    def test_it_keeps_a_cancel_claim_when_a_new_state_is_recorded(self):
        row = record_batch(observation(processed=1))
        Batch.objects.filter(pk=row.pk).update(cancel_requested_at=timezone.now(), cancel_requested_by="operator")
        record_batch(observation(processed=2))
        row.refresh_from_db()
        assert row.completed_requests == 2
        assert row.cancel_requested_by == "operator"


@pytest.mark.django_db(transaction=True)
def test_it_records_from_many_threads_at_once_without_losing_or_duplicating_states():
    batch_ids = [f"batch_race_{n}" for n in range(4)]
    states = [observation(batch_id, processed=p, total=12) for batch_id in batch_ids for p in range(12)]
    states += [completed(batch_id, total=12) for batch_id in batch_ids]
    errors = []
    start = threading.Barrier(8)

    def record_all(seed):
        try:
            mine = states[:]
            random.Random(seed).shuffle(mine)
            start.wait()
            for batch in mine:
                record_batch(batch)
        except Exception as exc:  # Any error (e.g. "database is locked") fails the test below.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=record_all, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Batch.objects.count() == 4
    for row in Batch.objects.all():
        assert row.status == "completed"  # No state was lost: the newest one won whatever the order.
        history = list(row.snapshots.values_list("status", "completed_requests", "payload_hash"))
        assert len({digest for _, _, digest in history}) == len(history)  # No duplicate snapshot.
        processed = [count for _, count, _ in history]
        assert processed == sorted(processed)  # The history never goes backwards.
        assert history[-1][0] == "completed"


@pytest.mark.django_db
def test_it_records_a_batch_whose_payload_has_counts_and_times_out_of_range():
    odd = observation(created_at=CREATED * 1000, request_counts={"total": -1, "completed": 2**40, "failed": 0})

    row = record_batch(odd)

    # Clamped to the columns (batches.normalise): a negative count is 0, a huge one the 32-bit column's largest.
    assert row.batch_id == "batch_1" and row.total_requests == 0 and row.completed_requests == 2**31 - 1
    assert BatchSnapshot.objects.filter(batch=row).count() == 1
