"""prune_snapshots: old finished batches keep their first, last and status-changing snapshots; nothing else changes."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches import services
from batches.management.commands.prune_snapshots import parse_duration
from batches.models import Batch, BatchSnapshot, record_batch
from tests.reference import EXAMPLES

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)


def _payload(batch_id, status, created, total, completed, **entered):
    data = json.loads((EXAMPLES / f"batch.{status}.json").read_text())
    data["id"] = batch_id
    data["created_at"] = int(created.timestamp())
    data["expires_at"] = int((created + timedelta(hours=24)).timestamp())
    for name in services.TIMESTAMP_FIELDS[1:]:
        data[name] = None
    for name, value in entered.items():
        data[name] = int(value.timestamp())
    data["request_counts"] = {"total": total, "completed": completed, "failed": 0}
    return data


def lifecycle(batch_id, *, days_ago, finish="completed", running_snapshots=5):
    """Record a batch observed validating once, in_progress several times, then finalizing and `finish`.

    Returns the snapshot ids in time order. With finish=None the batch is left running.
    """
    created = NOW - timedelta(days=days_ago)
    total = running_snapshots
    started = created + timedelta(minutes=5)

    def observe(status, minutes, completed, **entered):
        data = _payload(batch_id, status, created, total, completed, **entered)
        record_batch(services.ApiBatch.from_api(data), observed_at=created + timedelta(minutes=minutes))

    observe("validating", 1, 0)
    for i in range(running_snapshots):
        observe("in_progress", 10 + i, i, in_progress_at=started)
    if finish:
        finalizing = created + timedelta(minutes=30)
        observe("finalizing", 31, total, in_progress_at=started, finalizing_at=finalizing)
        done = created + timedelta(minutes=40)
        observe(finish, 41, total, in_progress_at=started, finalizing_at=finalizing, **{f"{finish}_at": done})
    return list(BatchSnapshot.objects.filter(batch__batch_id=batch_id).values_list("id", flat=True))


def prune(*args):
    out = StringIO()
    call_command("prune_snapshots", *args, stdout=out)
    return out.getvalue()


def remaining(batch_id):
    return list(BatchSnapshot.objects.filter(batch__batch_id=batch_id).values_list("id", flat=True))


def test_it_keeps_the_first_the_last_and_every_status_change():
    ids = lifecycle("batch_old", days_ago=40)
    validating, first_running, *more_running, finalizing, completed = ids
    assert len(more_running) == 4

    output = prune("--older-than", "30d")

    assert remaining("batch_old") == [validating, first_running, finalizing, completed]
    assert "1 finished batch(es)" in output
    assert "4 snapshot(s) kept, 4 deleted" in output


def test_it_keeps_the_last_snapshot_even_without_a_status_change():
    created = NOW - timedelta(days=60)
    for completed in range(4):
        data = _payload("batch_same", "expired", created, 3, completed, expired_at=created + timedelta(hours=24))
        record_batch(services.ApiBatch.from_api(data), observed_at=created + timedelta(hours=24, minutes=completed))
    first, *middle, last = remaining("batch_same")

    prune("--older-than", "30d")

    assert len(middle) == 2
    assert remaining("batch_same") == [first, last]


def test_it_leaves_recent_and_unfinished_batches_alone():
    recent = lifecycle("batch_recent", days_ago=3)
    running = lifecycle("batch_running", days_ago=40, finish=None)
    lifecycle("batch_old", days_ago=40)

    output = prune("--older-than", "30d")

    assert remaining("batch_recent") == recent
    assert remaining("batch_running") == running
    assert len(remaining("batch_old")) == 4
    assert "1 finished batch(es)" in output


def test_it_uses_the_last_change_when_the_api_gave_no_finish_time():
    ids = lifecycle("batch_no_time", days_ago=40, finish="cancelled")
    Batch.objects.filter(batch_id="batch_no_time").update(finished_at=None, last_changed_at=NOW - timedelta(days=40))
    lifecycle("batch_changed_lately", days_ago=40, finish="cancelled")
    Batch.objects.filter(batch_id="batch_changed_lately").update(finished_at=None, last_changed_at=NOW)

    prune("--older-than", "30d")

    assert len(remaining("batch_no_time")) == 4 < len(ids)
    assert len(remaining("batch_changed_lately")) == 8


@pytest.mark.parametrize(
    ("duration", "days_ago", "pruned"), [("12h", 1, True), ("2d", 1, False), ("90m", 0.1, True), ("90m", 0.05, False)]
)
def test_it_accepts_days_hours_and_minutes(duration, days_ago, pruned):
    # The batch finished 40 minutes after it was created `days_ago`.
    lifecycle("batch_x", days_ago=days_ago)

    prune("--older-than", duration)

    assert (len(remaining("batch_x")) == 4) is pruned


def test_it_deletes_nothing_in_a_dry_run_and_says_what_it_would_do():
    ids = lifecycle("batch_old", days_ago=40)

    output = prune("--older-than", "30d", "--dry-run", "--verbosity", "2")

    assert remaining("batch_old") == ids
    assert "Dry run, nothing deleted." in output
    assert "4 snapshot(s) kept, 4 would be deleted" in output
    assert "batch_old: kept 4, would delete 4" in output


def test_it_never_deletes_a_batch_row_or_reads_payloads():
    for n in range(3):
        lifecycle(f"batch_{n}", days_ago=40 + n)

    with CaptureQueriesContext(connection) as queries:
        prune("--older-than", "30d")

    assert Batch.objects.count() == 3
    assert BatchSnapshot.objects.count() == 12
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert selects and not any("payload" in sql for sql in selects)  # not even payload_hash
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("DELETE")]
    assert deletes and all("batches_batchsnapshot" in sql for sql in deletes)


def test_it_says_when_there_is_nothing_to_prune():
    assert "0 finished batch(es)" in prune("--older-than", "30d")


@pytest.mark.parametrize("value", ["", "30", "d", "thirty days", "1.5d", "-3d", "30s", "30 days", "0d"])
def test_it_rejects_durations_it_cannot_read(value):
    ids = lifecycle("batch_old", days_ago=40)

    with pytest.raises(CommandError, match=r"--older-than"):
        prune("--older-than", value)
    assert remaining("batch_old") == ids


def test_it_rejects_a_duration_too_large_to_count_back():
    with pytest.raises(CommandError, match="too large"):
        prune("--older-than", "99999999999d")
    with pytest.raises(CommandError, match="too large"):
        prune("--older-than", "999999d")  # a timedelta, but no date that far back


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)), (" 7d ", timedelta(7))],
)
def test_it_parses_durations(text, expected):
    assert parse_duration(text) == expected
