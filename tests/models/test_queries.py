"""The list page and its fragment cost the same number of queries for 5 batches as for 200."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from batches.lineage_keys import LineageState
from batches.models import Batch, record_batch
from sharing.models import ShareLink
from tests.conftest import completed, observation

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]

LIST_URLS = [  # url, headers, a batch the 200-batch answer must show (all share a creation time: newest id first)
    pytest.param("/batches/", {}, "batch_q0199", id="page"),
    pytest.param("/batches/", {"HX-Request": "true"}, "batch_q0199", id="fragment"),
    pytest.param("/batches/?status=in_progress&endpoint=/v1/chat/completions", {}, "batch_q0199", id="filtered"),
    pytest.param("/batches/?q=nightly", {"HX-Request": "true"}, "batch_q0199", id="search-fragment"),
    pytest.param("/batches/?page=2", {}, "batch_q0149", id="second-page"),
    pytest.param("/batches/?status=attention&sort=-progress", {}, "", id="attention-by-progress"),
    pytest.param("/batches/?q=description:nightly&sort=expires", {"HX-Request": "true"}, "", id="pair-by-expiry"),
    pytest.param("/batches/?created_from=2000-01-01&created_to=2999-12-31&sort=status", {}, "", id="dates-by-status"),
    pytest.param("/batches/?jobs=originals", {}, "batch_q0198", id="originals"),
    pytest.param("/batches/?job=batch_q0000", {"HX-Request": "true"}, "batch_q0000", id="one-job-fragment"),
]


def record(start, stop):
    """Batches in a mix of states: running ones have cancel buttons, finished ones have result files; some are
    retries of the batch before them, so rows show retry counts and parents."""
    for n in range(start, stop):
        metadata = {"description": f"nightly {n}"}
        if n % 4 == 1:
            metadata["batchboard_retry_of"] = f"batch_q{n - 1:04d}"
        if n % 3:
            record_batch(observation(f"batch_q{n:04d}", processed=n % 10, metadata=metadata))
        else:
            record_batch(completed(f"batch_q{n:04d}"))


def test_the_list_costs_the_same_queries_for_5_or_200_batches(operator_client, settings, subtests):
    """Each of LIST_URLS, answered from a cold cache, costs as many queries over 200 batches as over 5. The 195
    batches are recorded once for all of them (recording them is most of this test's time, on PostgreSQL above all);
    a cache of its own for each URL and each size keeps every answer as cold as in a test of its own."""

    def answer(case, size):
        url, headers, _shown = case.values
        settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{case.id}-{size}"}}
        with CaptureQueriesContext(connection) as queries:
            response = operator_client.get(url, headers=headers)
        assert response.status_code in (200, 286)
        return response, queries.captured_queries

    record(0, 5)
    few = {case.id: answer(case, "few")[1] for case in LIST_URLS}
    record(5, 200)
    for case in LIST_URLS:
        with subtests.test(case.id):
            response, many = answer(case, "many")
            assert len(many) == len(few[case.id]), "\n".join(query["sql"] for query in many)
            assert case.values[2] in response.text


def test_the_detail_costs_the_same_queries_for_a_short_or_long_history(viewer_client, django_assert_num_queries):
    for processed in range(2):
        record_batch(observation("batch_history", processed=processed, total=100))
    url = "/batches/batch_history/"
    viewer_client.get(url)  # The first view tries the file sizes once; the API is unreachable, so none do again.
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get(url).status_code == 200
    for processed in range(2, 60):
        record_batch(observation("batch_history", processed=processed, total=100))

    with django_assert_num_queries(len(few)):
        assert viewer_client.get(url).status_code == 200


@pytest.fixture
def still_clock(monkeypatch):
    """Every request in one 10-second clock step (part of every answer's key); set before anyone logs in."""
    monkeypatch.setattr("batches.views.live.time.time", lambda: 1_800_000_000.0)


def test_a_detail_poll_costs_the_same_queries_for_few_or_many_retries(still_clock, viewer_client):
    """The panel's key covers its retries card: reading it must not grow with the job."""
    record_batch(observation("batch_parent", processed=1))
    url = "/batches/batch_parent/"
    headers = {"HX-Request": "true"}

    def retries(start, stop):
        for n in range(start, stop):
            record_batch(observation(f"batch_retry{n:03d}", metadata={"batchboard_retry_of": "batch_parent"}))
        # What the check of their lines finds (their files are not kept here): verified retries, shown in the card.
        Batch.objects.filter(retry_of="batch_parent").update(lineage_state=LineageState.VERIFIED)

    def shown_key():
        return re.search(r'"X-Batchboard-Shown": "(\w+)"', viewer_client.get(url).text).group(1)

    retries(0, 2)
    key = shown_key()
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get(url, headers={**headers, "X-Batchboard-Shown": key}).status_code == 204
    retries(2, 40)
    key = shown_key()

    with CaptureQueriesContext(connection) as many:
        assert viewer_client.get(url, headers={**headers, "X-Batchboard-Shown": key}).status_code == 204

    assert len(many) == len(few)
    assert "batch_retry039" in viewer_client.get(url, headers=headers).text


def test_the_detail_costs_the_same_queries_for_one_or_many_share_links(
    viewer, viewer_client, django_assert_num_queries
):
    batch = record_batch(observation("batch_shared", processed=1, total=100))
    url = "/batches/batch_shared/"

    def links(count):
        for _ in range(count):
            ShareLink.make(batch, viewer, lifetime=timedelta(days=1), allow_results=True, allow_exports=False)

    links(1)
    viewer_client.get(url)  # The first view tries the file sizes once; the API is unreachable, so none do again.
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get(url).status_code == 200
    links(39)

    with django_assert_num_queries(len(few)):
        response = viewer_client.get(url)

    assert response.text.count("data-share-link=") == 40
