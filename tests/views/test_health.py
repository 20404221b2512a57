"""/healthz, /readyz and /metrics: what a process manager, a load balancer and Prometheus read."""

import re
from datetime import timedelta

import pytest
import yaml
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from batches import services
from batches.freshness import LIST_STATE
from batches.models import SyncState, record_batch
from tests.conftest import free_port

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-tests"
CREATED = 1_760_000_000


def _batch(batch_id, status, *, total=10, processed=0):
    terminal = status in services.TERMINAL_STATUSES
    return services.ApiBatch.from_api(
        {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": status,
            "created_at": CREATED,
            "completed_at": CREATED + 60 if terminal else None,
            "request_counts": {"total": total, "completed": processed, "failed": 0},
            "metadata": {},
        }
    )


def _synced(seconds_ago=0.0, **fields):
    at = timezone.now() - timedelta(seconds=seconds_ago)
    SyncState.objects.create(name=LIST_STATE, claimed_at=at, succeeded_at=at, heartbeat_at=at, **fields)


def test_healthz_answers_anyone_without_details(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.text == "ok\n"


def test_readyz_is_ready_with_a_database_a_cache_and_a_recent_sync(client):
    _synced(seconds_ago=10)
    response = client.get("/readyz")
    assert response.status_code == 200 and response.text == "ready\n"


@pytest.mark.parametrize(
    ("seconds_ago", "reason"),
    [(None, "the sync loop has never run"), (3600, "no sign of the sync loop for 360")],
)
def test_readyz_says_in_one_line_that_the_sync_is_not_running(client, seconds_ago, reason):
    if seconds_ago is not None:
        _synced(seconds_ago=seconds_ago)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.text.startswith(f"not ready: {reason}") and response.text.count("\n") == 1


def test_readyz_says_when_the_cache_does_not_answer(client, settings):
    _synced()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    response = client.get("/readyz")
    assert response.status_code == 503 and response.text.startswith("not ready: the cache does not answer")


def test_metrics_are_off_without_a_token(client, settings):
    settings.BATCHBOARD_METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.parametrize("authorization", ["", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_metrics_need_the_token(client, settings, authorization):
    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    response = client.get("/metrics", headers={"Authorization": authorization} if authorization else {})
    assert response.status_code == 401 and TOKEN not in response.text


DEFAULT = (("connection", "default"),)  # the label of the single-key install's figures


def _in(status: str) -> tuple:
    return (*DEFAULT, ("status", status))


def _scrape(client) -> dict:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_batches_requests_stuck_states_and_the_sync(client, settings):
    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    now = timezone.now()
    record_batch(_batch("batch_old_validating", "validating"), observed_at=now - timedelta(minutes=45))
    record_batch(_batch("batch_new_validating", "validating"), observed_at=now - timedelta(minutes=5))
    record_batch(_batch("batch_running", "in_progress", total=100, processed=0), observed_at=now - timedelta(hours=2))
    record_batch(_batch("batch_running", "in_progress", total=100, processed=40), observed_at=now)
    cancelling = _batch("batch_cancelling", "cancelling", total=10, processed=5)
    record_batch(cancelling, observed_at=now - timedelta(minutes=20))
    record_batch(_batch("batch_done", "completed", total=10, processed=10), observed_at=now)
    _synced(seconds_ago=90, consecutive_failures=2)

    figures = _scrape(client)

    assert figures[("batchboard_batches", _in("validating"))] == 2
    assert figures[("batchboard_batches", _in("in_progress"))] == 1
    assert figures[("batchboard_batches", _in("completed"))] == 1
    assert figures[("batchboard_batches", _in("failed"))] == 0
    assert figures[("batchboard_requests_in_flight", DEFAULT)] == 10 + 10 + 60 + 5
    # In its status since it was first seen in it, not since its last change of counts.
    assert 7190 < figures[("batchboard_oldest_batch_in_status_seconds", _in("in_progress"))] < 7300
    assert 2690 < figures[("batchboard_oldest_batch_in_status_seconds", _in("validating"))] < 2800
    assert figures[("batchboard_batches_stuck", _in("validating"))] == 1  # 45 min > 30 min; 5 min is not
    assert figures[("batchboard_batches_stuck", _in("cancelling"))] == 1  # 20 min > 15 min
    assert figures[("batchboard_batches_stuck", _in("finalizing"))] == 0
    assert 89 < figures[("batchboard_sync_lag_seconds", DEFAULT)] < 120
    assert figures[("batchboard_sync_consecutive_failures", DEFAULT)] == 2


def _waiting_task(minutes: int):
    """A task enqueued `minutes` ago that no worker took."""
    from django_tasks_db.models import DBTaskResult

    from results.tasks import keep_results

    result = keep_results.enqueue(1)
    DBTaskResult.objects.filter(pk=result.id).update(enqueued_at=timezone.now() - timedelta(minutes=minutes))


def test_readyz_says_when_tasks_wait_for_a_worker_that_is_not_running(client):
    _synced()
    _waiting_task(minutes=1)
    assert client.get("/readyz").text == "ready\n"  # a minute's wait is a busy worker, not a missing one

    _waiting_task(minutes=20)
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.text.startswith("not ready: 2 task(s) have waited 1200 s on the queue")
    assert "manage.py db_worker" in response.text and response.text.count("\n") == 1


def test_metrics_report_the_task_queue(client, settings):
    from batches.models import Batch, Reaction

    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    settings.BATCHBOARD_ARCHIVE = "off"
    _synced()
    _waiting_task(minutes=3)
    batch = record_batch(_batch("batch_done", "completed"))
    Reaction.objects.create(batch=batch, step="keep_results", state="failed", finished_at=timezone.now())
    Reaction.objects.create(
        batch=Batch.objects.get(),
        step="keep_results",
        attempt=1,
        state="failed",
        finished_at=timezone.now() - timedelta(hours=2),
    )

    figures = _scrape(client)

    assert figures[("batchboard_tasks_waiting", ())] == 1
    assert 179 < figures[("batchboard_tasks_oldest_waiting_seconds", ())] < 240
    assert figures[("batchboard_tasks_failed_last_hour", ())] == 1


def test_metrics_cost_the_same_queries_for_many_running_batches(client, settings, django_assert_max_num_queries):
    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    _synced()
    for n in range(50):
        record_batch(_batch(f"batch_{n}", "in_progress", processed=n % 10))
    with django_assert_max_num_queries(11):  # the batches, the sync, webhook refusals, the task queue: 10 today
        _scrape(client)


def test_the_sample_alert_rules_use_only_metrics_that_are_exposed(client, settings):
    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    _synced()
    exposed = {name for name, _labels in _scrape(client)}
    rules = yaml.safe_load((settings.BASE_DIR / "deploy" / "prometheus-alerts.yml").read_text())

    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}

    assert set(alerts) == {
        "BatchboardBatchStuck",
        "BatchboardSyncStopped",
        "BatchboardUpstreamErrors",
        "BatchboardBatchesSkipped",
    }
    for expr in alerts.values():
        assert set(re.findall(r"batchboard_[a-z_]+", expr)) <= exposed, expr


def test_the_operations_guide_shows_the_alert_rules_as_they_are_in_deploy(settings):
    guide = (settings.BASE_DIR / "docs" / "operations.md").read_text()
    rules = (settings.BASE_DIR / "deploy" / "prometheus-alerts.yml").read_text()
    assert f"```yaml\n{rules}```" in guide
