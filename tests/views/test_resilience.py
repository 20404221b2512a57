"""When the API fails: pages render the last known state with a stale notice; viewers never walk the list."""

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from batches import freshness, services, sync
from batches.models import Batch
from sandbox import views as sandbox_views
from tests.conftest import create_batches

pytestmark = pytest.mark.usefixtures("sandbox_url")

WRONG_KEY = "sk-wrong-key-0123456789abcdef"


@pytest.fixture
def cached_batch(settings):
    """One running batch that the dashboard has seen, before anything goes wrong."""
    batch = create_batches(1, speed=1)[0]
    sync.run_pass(force=True)
    settings.OPENAI_MAX_RETRIES = 0  # Failures surface at once instead of after the client's retries.
    return Batch.objects.get(batch_id=batch.id)


def test_it_shows_the_last_known_state_when_every_request_fails(settings, viewer_client, cached_batch):
    settings.SANDBOX_ERROR_RATE = 1.0
    sync.run_pass(force=True)  # The sync loop's pass fails; the list's pages say so.

    pages = {
        "list": viewer_client.get("/batches/"),
        "fragment": viewer_client.get("/batches/", headers={"HX-Request": "true"}),
        "detail": viewer_client.get(f"/batches/{cached_batch.batch_id}/"),
    }

    for name, response in pages.items():
        assert response.status_code == 200, name
        assert cached_batch.batch_id in response.text, name
        assert "Stale." in response.text and "As of" in response.text, name
        assert "Cannot reach the OpenAI API" in response.text, name


def test_it_renders_every_page_while_a_third_of_the_requests_fail(settings, viewer_client, cached_batch, monkeypatch):
    settings.SANDBOX_ERROR_RATE = 0.3
    sandbox_views.fault_draws.seed(30)  # the same faults, in the same order, on every run
    injected = []
    draw = sandbox_views._injected_fault
    monkeypatch.setattr(sandbox_views, "_injected_fault", lambda *args: injected.append(draw(*args)) or injected[-1])

    statuses = set()
    for _ in range(8):
        statuses.add(viewer_client.get("/batches/").status_code)
        statuses.add(viewer_client.get("/batches/", headers={"HX-Request": "true"}).status_code)
        statuses.add(viewer_client.get(f"/batches/{cached_batch.batch_id}/").status_code)

    assert statuses <= {200, 286}
    failed = [fault for fault in injected if fault is not None]
    assert injected and 0 < len(failed) < len(injected)  # some answers failed, and some did not


def test_it_says_the_api_is_rate_limiting(settings, viewer_client, cached_batch):
    settings.SANDBOX_RATE_LIMIT_RATE = 1.0
    settings.SANDBOX_RETRY_AFTER = 0.01
    sync.run_pass(force=True)

    response = viewer_client.get("/batches/")

    assert response.status_code == 200
    assert "rate limiting" in response.text and "As of" in response.text


def test_it_answers_503_for_a_batch_it_has_never_seen_while_the_api_is_down(settings, viewer_client):
    settings.OPENAI_MAX_RETRIES = 0
    settings.SANDBOX_ERROR_RATE = 1.0

    response = viewer_client.get("/batches/batch_never_seen_before/")

    assert response.status_code == 503
    assert "Cannot reach the API" in response.text
    assert "batch_never_seen_before" in response.text


def test_it_says_plainly_on_every_page_that_the_key_was_rejected(settings, viewer_client, cached_batch):
    Batch.objects.filter(pk=cached_batch.pk).update(status="completed", is_terminal=True)  # Its page needs no API.
    settings.OPENAI_API_KEY = WRONG_KEY
    sync.run_pass(force=True)

    pages = {
        "list": viewer_client.get("/batches/"),
        "detail of a final batch": viewer_client.get(f"/batches/{cached_batch.batch_id}/"),
        "not found": viewer_client.get("/batches/no/such/page/"),
        "never seen batch": viewer_client.get("/batches/batch_never_seen_before/"),
    }

    for name, response in pages.items():
        assert "Authentication failed." in response.text, name
        assert "rejected the configured API key" in response.text, name
        assert WRONG_KEY not in response.text, name
    assert pages["list"].status_code == 200
    assert pages["detail of a final batch"].status_code == 200
    assert "The API rejected the key" in pages["never seen batch"].text


def test_it_keeps_the_auth_banner_off_the_login_page(settings, client):
    settings.OPENAI_API_KEY = WRONG_KEY
    settings.OPENAI_MAX_RETRIES = 0
    sync.run_pass(force=True)

    response = client.get("/accounts/login/")

    assert response.status_code == 200
    assert "Authentication failed." not in response.text


def test_it_backs_off_while_the_api_keeps_failing(settings, cached_batch):
    settings.BATCHBOARD_REFRESH_INTERVAL = 2.0
    settings.SANDBOX_ERROR_RATE = 1.0
    retries = []
    for _ in range(3):
        sync.run_pass(force=True)
        retries.append(freshness.list_freshness().retry_seconds)

    state = freshness.list_freshness()
    assert not state.ok and state.consecutive_failures == 3
    assert retries == sorted(retries) and retries[-1] > retries[0]
    sync.run_pass(force=True)
    assert freshness.list_freshness().retry_seconds <= freshness.MAX_BACKOFF_SECONDS
    assert not sync.run_pass().ran  # A loop's next pass waits out the longer interval of a failing API.


@pytest.fixture
def count_list_calls(monkeypatch):
    """Counts the list pages fetched from the API, in every thread (the real client still makes the call)."""
    calls = []
    real_list_batches = services.BatchClient.list_batches

    def list_batches(self, **kwargs):
        calls.append(kwargs)
        return real_list_batches(self, **kwargs)

    monkeypatch.setattr(services.BatchClient, "list_batches", list_batches)
    return calls


def run_at_once(count, target):
    start = threading.Barrier(count)
    results, errors = [], []

    def run():
        start.wait()
        try:
            results.append(target())
        except Exception as exc:  # Fails the calling test.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_viewers_polling_at_once_never_call_the_api_for_the_list(settings, viewer, count_list_calls):
    create_batches(2, speed=1)
    sync.run_pass(force=True)
    count_list_calls.clear()
    settings.BATCHBOARD_REFRESH_INTERVAL = 2.0

    def poll():
        client = Client()
        client.force_login(get_user_model().objects.get(pk=viewer.pk))
        return client.get("/batches/", headers={"HX-Request": "true"}).status_code

    statuses = run_at_once(8, poll)

    assert set(statuses) <= {200, 286}
    assert count_list_calls == []


def test_a_list_view_answers_from_the_cache_while_a_slow_pass_is_under_way(settings, viewer_client, count_list_calls):
    create_batches(1, speed=1)
    settings.SANDBOX_LATENCY = 1.0  # The pass is slow.
    walking = threading.Thread(target=lambda: (sync.run_pass(force=True), connection.close()))
    walking.start()
    while not count_list_calls:
        walking.join(timeout=0.01)

    response = viewer_client.get("/batches/")

    assert walking.is_alive()  # This viewer was answered while the pass was still waiting for the API.
    walking.join()
    assert response.status_code == 200
    assert len(count_list_calls) == 1
