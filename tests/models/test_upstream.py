"""upstream: the wording of upstream failures, and the cancel claim when calls overlap or die."""

import sqlite3
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from batches import actions, freshness, services
from batches.models import CANCEL_CLAIM_SECONDS, Batch
from tests.fake_api import Reply


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            services.AuthenticationFailed("Incorrect API key provided: sk-…abcd.", status=401),
            "The OpenAI API rejected the configured API key. Check OPENAI_API_KEY (and the organisation/project). "
            "Nothing was done.",
        ),
        (
            services.RateLimited("You exceeded your current quota.", status=429, code="insufficient_quota"),
            "The OpenAI account is out of quota. Nothing was done.",
        ),
        (
            services.RateLimited("Rate limit reached.", status=429, code="rate_limit_exceeded"),
            "The OpenAI API is rate limiting requests. Nothing was done. Try again.",
        ),
        (
            services.Unavailable("The Batch API did not answer in time (GET /batches)."),
            "Cannot reach the OpenAI API right now. Nothing was done. Try again.",
        ),
        (
            services.BadRequest("Invalid 'limit': integer above maximum value.", status=400),
            "The OpenAI API said: Invalid 'limit': integer above maximum value. Nothing was done.",
        ),
        (
            services.BatchApiError("The Batch API returned the same page twice; paging stopped to avoid a loop."),
            "The Batch API returned the same page twice; paging stopped to avoid a loop. Nothing was done.",
        ),
    ],
    ids=["auth", "out-of-quota", "rate-limited", "unavailable", "api-said", "client-said"],
)
def test_it_words_each_failure_with_its_consequence_and_a_retry_only_where_waiting_helps(exc, expected):
    assert freshness.failure_message(exc, then="Nothing was done.", retry="Try again.") == expected


def test_it_words_a_failure_alone_for_pages_that_say_the_rest_themselves():
    exc = services.Unavailable("The Batch API could not be reached (GET /batches).")
    assert freshness.failure_message(exc) == "Cannot reach the OpenAI API right now."


class _SlowFailingClient:
    """A cancel that outlives its claim: meanwhile another request claims the batch; then the call fails."""

    def __init__(self):
        self.calls = 0

    def cancel_batch(self, batch_id):
        self.calls += 1
        Batch.objects.filter(batch_id=batch_id).update(cancel_requested_at=timezone.now(), cancel_requested_by="second")
        raise services.Unavailable("The Batch API did not answer in time (POST /batches/x/cancel).")


@pytest.mark.django_db
def test_a_failed_cancel_leaves_the_claim_another_request_took_meanwhile(api):
    batch = api.add("in_progress")
    client = _SlowFailingClient()

    outcome = actions.cancel_batch(batch["id"], user="first", client=client)

    assert outcome.error.startswith("Cannot reach the OpenAI API")
    row = Batch.objects.get(batch_id=batch["id"])
    assert row.cancel_requested_by == "second" and row.cancel_pending
    # The second request is still in flight: a further click sends nothing.
    assert actions.cancel_batch(batch["id"], user="third").result == "already"
    assert api.cancels == [] and client.calls == 1


@pytest.mark.django_db
def test_a_claim_left_by_a_request_that_died_expires(api):
    batch = api.add("in_progress")
    died_at = timezone.now() - timedelta(seconds=CANCEL_CLAIM_SECONDS + 1)
    Batch.objects.filter(batch_id=batch["id"]).update(cancel_requested_at=died_at, cancel_requested_by="gone")

    outcome = actions.cancel_batch(batch["id"], user="operator")

    assert outcome.result == "cancelled"
    assert api.cancels == [batch["id"]]
    row = Batch.objects.get(batch_id=batch["id"])
    assert row.status == "cancelling" and row.cancel_requested_by == "operator"


@pytest.fixture
def locked_database(transactional_db, monkeypatch):
    """Another connection holds the write lock (as a VACUUM would); this thread's writes give up after 50 ms."""
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 0.05)
    connection.close()
    other = sqlite3.connect(connection.settings_dict["NAME"])
    other.execute("BEGIN IMMEDIATE")
    yield
    other.rollback()
    other.close()
    connection.close()


@pytest.fixture
def cached_running_batch(transactional_db, api):
    return api.add("in_progress")


@pytest.mark.sqlite
def test_pages_show_the_cache_while_the_database_is_too_busy_to_record_a_refresh(
    cached_running_batch, viewer_client, locked_database
):
    batch_id = cached_running_batch["id"]

    pages = {
        "list": viewer_client.get("/batches/"),
        "fragment": viewer_client.get("/batches/", headers={"HX-Request": "true"}),
        "detail": viewer_client.get(f"/batches/{batch_id}/"),
    }

    for name, response in pages.items():
        assert response.status_code == 200, name
        assert batch_id in response.text, name
    # The list only reads; the detail page's refresh could not be recorded, and says so.
    assert "Stale." in pages["detail"].text and "database is busy" in pages["detail"].text


@pytest.mark.django_db
def test_it_says_why_a_batch_it_has_never_seen_could_not_be_cancelled(api):
    api.server.script("GET", "/batches/batch_unseen", Reply.example("error.401.invalid_api_key.json", 401))

    outcome = actions.cancel_batch("batch_unseen", user="operator")

    assert outcome.result == "error" and outcome.batch is None
    assert outcome.error == (
        "The OpenAI API rejected the configured API key. Check OPENAI_API_KEY (and the organisation/project). "
        "Nothing was cancelled."
    )
    assert api.cancels == []
