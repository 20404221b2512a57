"""Issue 18, finding 1: one odd batch the API sends never stops a sync pass, and never costs the normal batch beside
it on the same page. What the API sends is normalised where it enters (batches.normalise); what the database still
refuses is skipped in a savepoint of its own, logged and counted; an unexpected error fails the pass, visibly."""

import json
import logging
import random

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from batches import normalise, services, sync
from batches.freshness import list_freshness as freshness_of_list
from batches.models import Batch, BatchSnapshot, Connection, DailySpend, SyncState, record_batches
from tests.batch_api import payload
from tests.fake_api import Reply
from tests.hostile_api import hostile_batch

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-hostile-tests"


def _one_pass():
    outcome = sync.run_pass(force=True)
    assert outcome.ran and not outcome.error, outcome.describe()
    return outcome.result


def _metrics(client, settings) -> dict:
    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if set(sample.labels) <= {"connection"}  # the one connection of these tests
    }


def _page_with(api, odd_fields: dict, *, status="completed"):
    """A list page holding a normal batch and, beside it, one with `odd_fields` merged into its payload."""
    normal = api.add("in_progress", record=False)
    odd = api.add(status, record=False, created_at=normal["created_at"] - 1)
    for name, value in odd_fields.items():
        if name in ("usage", "request_counts") and isinstance(odd.get(name), dict):
            odd[name] = {**odd[name], **value}
        else:
            odd[name] = value
    return normal, odd


def _assert_both_recorded(normal, odd):
    assert Batch.objects.filter(batch_id=normal["id"]).exists(), "the normal batch beside it was not recorded"
    assert BatchSnapshot.objects.filter(batch__batch_id=normal["id"]).count() == 1
    row = Batch.objects.get(batch_id=odd["id"])
    assert SyncState.objects.get(name=sync.LIST_STATE).consecutive_failures == 0
    return row


def test_finding_1_a_batch_with_2_to_the_63_tokens_is_recorded_clamped_beside_the_normal_one(api):
    normal, odd = _page_with(api, {"usage": {"input_tokens": 2**63, "output_tokens": 2**64, "total_tokens": 2**70}})

    result = _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert (row.input_tokens, row.output_tokens) == (normalise.MAX_TOKENS, normalise.MAX_TOKENS)
    assert result.skipped == 0
    # The daily totals add it without overflowing, and a second such batch too.
    assert DailySpend.objects.get(model=row.model).input_tokens == normalise.MAX_TOKENS


def test_finding_1_negative_tokens_and_counts_are_recorded_as_0(api):
    normal, odd = _page_with(
        api,
        {
            "usage": {"input_tokens": -5, "output_tokens": -(2**70), "input_tokens_details": {"cached_tokens": -1}},
            "request_counts": {"total": -3, "completed": -1, "failed": 2**40},
        },
    )

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (0, 0, 0)
    assert (row.total_requests, row.completed_requests, row.failed_requests) == (0, 0, normalise.MAX_COUNT)


def test_finding_1_a_28_character_status_is_kept_as_unknown_with_its_text_shown(api, viewer_client):
    normal, odd = _page_with(api, {"status": "Waiting_For_Capacity_Region1"})
    assert len(odd["status"]) == 28

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert row.status == normalise.UNKNOWN_STATUS and not row.is_terminal  # refreshed until it says a known one
    assert row.reported_status == "Waiting_For_Capacity_Region1"
    page = viewer_client.get(f"/batches/{odd['id']}/")
    assert page.status_code == 200
    assert "Waiting_For_Capacity_Region1" in page.text
    listing = viewer_client.get("/batches/?status=unknown")
    assert listing.status_code == 200 and odd["id"] in listing.text and normal["id"] not in listing.text


def test_finding_1_a_status_that_turns_known_again_is_recorded_as_that(api):
    _normal, odd = _page_with(api, {"status": "paused"}, status="in_progress")
    _one_pass()
    assert Batch.objects.get(batch_id=odd["id"]).status == normalise.UNKNOWN_STATUS

    odd["status"] = "completed"
    odd["completed_at"] = odd["created_at"] + 100
    _one_pass()

    row = Batch.objects.get(batch_id=odd["id"])
    assert row.status == "completed" and row.is_terminal and row.reported_status == ""


def test_finding_1_a_200_character_model_is_cut_to_its_column_with_a_mark(api):
    normal, odd = _page_with(api, {"model": "m" * 200})

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert len(row.model) == normalise.MODEL_LENGTH and row.model.endswith(normalise.TRUNCATION_MARK)
    assert row.model[:10] == "m" * 10


def test_finding_1_a_100_character_endpoint_is_cut_to_its_column_with_a_mark(api):
    normal, odd = _page_with(api, {"endpoint": "/v1/" + "e" * 96})

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert len(row.endpoint) == normalise.ENDPOINT_LENGTH and row.endpoint.endswith(normalise.TRUNCATION_MARK)


def test_finding_1_nul_in_metadata_is_stripped_and_the_batch_is_found_by_its_words(api):
    normal, odd = _page_with(api, {"metadata": {"desc\x00ription": "week\x00ly", "owner": "\x00"}})

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert row.metadata == {"description": "weekly", "owner": ""}
    assert list(Batch.objects.search("weekly").values_list("batch_id", flat=True)) == [odd["id"]]


def test_finding_1_nul_anywhere_in_the_payload_is_stripped(api):
    normal, odd = _page_with(
        api,
        {
            "model": "gpt\x00-4o",
            "endpoint": "/v1/chat/completions\x00",
            "errors": {"object": "list", "data": [{"code": "x\x00", "message": "bad\x00 line", "line": 1}]},
            "x_unknown_field\x00": {"nested": ["\x00", {"deep\x00er": "v\x00"}]},
        },
    )

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert row.model == "gpt-4o" and row.endpoint == "/v1/chat/completions"
    assert "\x00" not in repr(row.payload)
    assert row.payload["x_unknown_field"] == {"nested": ["", {"deeper": "v"}]}
    assert row.api.errors[0].message == "bad line"


def test_finding_1_metadata_that_is_not_an_object_is_recorded_as_empty(api):
    normal, odd = _page_with(api, {"metadata": ["items", "keys"]})

    _one_pass()

    assert _assert_both_recorded(normal, odd).metadata == {}


def test_finding_1_numbers_that_are_not_numbers_read_as_0(api):
    normal, odd = _page_with(api, {"request_counts": {"total": "10", "completed": None, "failed": [1]}})

    _one_pass()

    row = _assert_both_recorded(normal, odd)
    assert (row.total_requests, row.completed_requests, row.failed_requests) == (0, 0, 0)


def test_finding_1_a_number_of_5000_digits_or_nan_does_not_fail_the_page(api):
    normal = api.add("in_progress", record=False)
    odd = payload("in_progress", created_at=normal["created_at"] - 1)
    page = json.dumps({"object": "list", "data": [odd, normal], "has_more": False}).encode()
    page = page.replace(b'"total": 5', b'"total": ' + b"9" * 5000, 1).replace(b'"completed": 2', b'"completed": NaN', 1)
    api.list_reply = Reply(body=page)

    _one_pass()

    row = Batch.objects.get(batch_id=odd["id"])
    assert (row.total_requests, row.completed_requests) == (normalise.MAX_COUNT, 0)
    assert Batch.objects.filter(batch_id=normal["id"]).exists()


# --- What the database still refuses: one savepoint per batch --------------------------


def _unnormalised(batch_id: str, **usage) -> services.ApiBatch:
    """A batch built without the normaliser, as a value it does not know about would reach the database."""
    return services.ApiBatch(
        id=batch_id,
        status="completed",
        endpoint="/v1/chat/completions",
        input_file_id="file-in",
        completion_window="24h",
        created_at=1_760_000_000,
        in_progress_at=1_760_000_010,
        completed_at=1_760_000_100,
        request_counts=services.RequestCounts(total=5, completed=5),  # further on than any stored state
        usage=services.Usage(**usage),
        raw={"id": batch_id, "status": "completed", "created_at": 1_760_000_000},
    )


@pytest.mark.parametrize(
    "usage", [{"input_tokens": 2**63}, {"input_tokens": -1}], ids=["2**63 tokens", "negative tokens"]
)
def test_finding_1_a_batch_the_database_refuses_is_skipped_and_the_rest_of_the_bulk_insert_is_kept(usage):
    normal = services.ApiBatch.from_api(payload("completed"))

    recorded = record_batches([normal, _unnormalised("batch_refused", **usage)], timezone.now())

    assert recorded.skipped == ["batch_refused"] and recorded.new == [normal.id]
    assert list(Batch.objects.values_list("batch_id", flat=True)) == [normal.id]


@pytest.mark.parametrize(
    "usage", [{"input_tokens": 2**63}, {"input_tokens": -1}], ids=["2**63 tokens", "negative tokens"]
)
def test_finding_1_the_sync_pass_skips_and_counts_a_refused_batch_and_says_so_in_metrics(
    usage, client, settings, sync_log_records
):
    SyncState.objects.named(sync.LIST_STATE)
    normal_new = services.ApiBatch.from_api(payload("in_progress"))
    changed = services.ApiBatch.from_api(payload("in_progress"))
    record_batches([changed], timezone.now())
    refused_change = _unnormalised(changed.id, **usage)
    result = sync.SyncResult()

    walk = sync._Walk(Connection.objects.default(), None, result, lambda: True, None, sync.PAGE_SIZE)
    sync._record_page(walk, (normal_new, _unnormalised("batch_refused", **usage), refused_change))
    sync._record_outcome(result, None, 0.1, sync.LIST_STATE)

    assert result.skipped == 2
    assert Batch.objects.filter(batch_id=normal_new.id).exists()
    assert not Batch.objects.filter(batch_id="batch_refused").exists()
    assert Batch.objects.get(batch_id=changed.id).status == "in_progress"  # the refused change left it as it was
    assert SyncState.objects.get(name=sync.LIST_STATE).skipped_total == 2
    assert _metrics(client, settings)["batchboard_sync_skipped_total"] == 2
    assert any("Skipped recording batch_refused" in message for message in sync_log_records())


@pytest.fixture
def sync_log_records(caplog):
    logger = logging.getLogger("batches")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="batches")
    yield lambda: [record.getMessage() for record in caplog.records]
    logger.removeHandler(caplog.handler)


def test_finding_1_an_unexpected_error_fails_the_pass_and_raises_the_failure_metric(
    api, client, settings, monkeypatch, sync_log_records
):
    api.add("in_progress", record=False)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the walk")

    monkeypatch.setattr(sync, "_walk_top", broken)

    first = sync.run_pass(force=True)
    second = sync.run_pass(force=True)

    assert first.ran and "unexpected error (RuntimeError)" in first.error
    assert second.error
    assert SyncState.objects.get(name=sync.LIST_STATE).consecutive_failures == 2
    figures = _metrics(client, settings)
    assert figures["batchboard_sync_consecutive_failures"] == 2
    assert any("sync pass failed unexpectedly" in message for message in sync_log_records())
    freshness = freshness_of_list()
    assert not freshness.ok and "RuntimeError" in freshness.error_message


@pytest.mark.once
def test_finding_1_the_normaliser_leaves_nothing_a_database_refuses_and_is_stable():
    rng = random.Random(1)
    for number in range(300):
        data = json.loads(json.dumps(hostile_batch(rng, number, 1_760_000_000)))  # as it arrives: NaN, "\ud800"...
        cleaned = normalise.batch_payload(data)
        assert normalise.batch_payload(cleaned) == cleaned
        encoded = json.dumps(cleaned, allow_nan=False)  # no NaN or Infinity, which jsonb refuses
        assert "\\u0000" not in encoded and "\x00" not in encoded
        encoded.encode("utf-8")  # no lone surrogate
        batch = services.ApiBatch.from_api(data)
        assert batch.status in services.RECORDED_STATUSES
        assert len(batch.model or "") <= normalise.MODEL_LENGTH
        assert len(batch.endpoint or "") <= normalise.ENDPOINT_LENGTH
        assert all(0 <= count <= normalise.MAX_COUNT for count in vars(batch.request_counts).values())
        assert batch.usage is None or all(0 <= n <= normalise.MAX_TOKENS for n in vars(batch.usage).values())
