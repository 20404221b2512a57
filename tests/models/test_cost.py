"""Actual cost: token usage recorded with each state, priced on the detail page, the list and the summary strip."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches import services
from batches.models import TOKEN_FIELDS, Batch, DailySpend, record_batch, record_batches
from batches.spending import figures

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]


def _batch(batch_id, *, status="completed", model="gpt-4o-mini-2024-07-18", usage=(1_000_000, 0, 1_000_000), **fields):
    """A Batch as the API describes it, with `usage` = (input, cached input, output) tokens, or None."""
    now = int(timezone.now().timestamp())
    payload = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "model": model,
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": status,
        "created_at": now - 600,
        "in_progress_at": now - 590,
        "expires_at": now + 86_000,
        "request_counts": {"total": 10, "completed": 10 if status == "completed" else 4, "failed": 0},
        "metadata": {},
        **fields,
    }
    if status == "completed":
        payload.setdefault("completed_at", now - 10)
    if usage is not None:
        tokens_in, cached, tokens_out = usage
        payload["usage"] = {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        }
    return services.ApiBatch.from_api(payload)


# gpt-4o-mini batch prices: input 0.075, cached input 0.0375, output 0.30 per million tokens.


def test_recording_a_state_copies_its_usage_and_the_cost_follows():
    row = record_batch(_batch("batch_a", status="in_progress", usage=(200_000, 100_000, 10_000)))
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (200_000, 100_000, 10_000)
    assert row.cost == Decimal("0.0075") + Decimal("0.00375") + Decimal("0.003")
    row = record_batch(_batch("batch_a", usage=(1_000_000, 400_000, 500_000)))
    row.refresh_from_db()
    assert row.cost == Decimal("0.21")


def test_a_batch_without_usage_has_no_cost():
    row = record_batch(_batch("batch_old", usage=None))
    assert row.input_tokens is None and row.cost is None
    assert not row.has_usage


def test_legacy_usage_keys_are_read_too():
    batch = _batch("batch_legacy", usage=None)
    batch = services.ApiBatch.from_api(
        {**batch.raw, "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    )
    row = record_batch(batch)
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (10, 0, 5)


def test_the_detail_page_shows_the_cost_with_cached_tokens_at_their_price(viewer_client):
    record_batch(_batch("batch_done", usage=(1_000_000, 400_000, 500_000)))
    page = viewer_client.get("/batches/batch_done/").text
    assert "$0.21" in page
    assert "Cached input" in page and "400,000" in page and "$0.0375" in page
    assert "the family of <code>gpt-4o-mini-2024-07-18</code>" in page


def test_the_detail_page_of_a_running_batch_shows_the_cost_so_far(viewer_client):
    record_batch(_batch("batch_running", status="in_progress", usage=(1_000_000, 0, 0)))
    response = viewer_client.get("/batches/batch_running/")
    assert "Cost so far" in response.text and "$0.08" in response.text
    fragment = viewer_client.get("/batches/batch_running/", headers={"HX-Request": "true"})
    assert "Cost so far" in fragment.text and "$0.08" in fragment.text


def test_a_model_without_a_price_says_so_and_points_to_the_setting(viewer_client):
    record_batch(_batch("batch_custom", model="ft:gpt-4o-mini-2024-07-18:acme::x1"))
    page = viewer_client.get("/batches/batch_custom/").text
    assert "no price known" in page and "BATCHBOARD_PRICES" in page and "/batches/prices/#add-prices" in page
    assert "$" not in page.split('id="batch-cost"')[1].split("</section>")[0]


def test_a_batch_the_api_reported_no_usage_for_says_the_cost_is_not_known(viewer_client):
    record_batch(_batch("batch_old", usage=None))
    page = viewer_client.get("/batches/batch_old/").text
    assert "reported no token usage" in page


def test_the_list_has_a_cost_column(viewer_client):
    record_batch(_batch("batch_done", usage=(1_000_000, 400_000, 500_000)))
    record_batch(_batch("batch_running", status="in_progress", usage=(1_000_000, 0, 0)))
    record_batch(_batch("batch_custom", model="acme-model"))
    record_batch(_batch("batch_old", usage=None))
    page = viewer_client.get("/batches/").text
    row = {
        batch_id: page.split(f'id="row-{batch_id}"')[1].split("</tr>")[0]
        for batch_id in ("batch_done", "batch_running", "batch_custom", "batch_old")
    }
    assert "$0.21" in row["batch_done"]
    assert "$0.08" in row["batch_running"] and "so far" in row["batch_running"]
    assert "no price known" in row["batch_custom"]
    assert "—" in row["batch_old"] and "$" not in row["batch_old"]


def test_the_summary_strip_sums_today_this_month_and_running_batches(viewer_client):
    now = timezone.now()
    today = int(now.timestamp()) - 1
    record_batch(_batch("batch_today", completed_at=today, usage=(1_000_000, 0, 1_000_000)))  # $0.375
    record_batch(_batch("batch_expired", status="expired", expired_at=today, usage=(1_000_000, 0, 0)))  # $0.075
    record_batch(_batch("batch_running", status="in_progress", usage=(2_000_000, 0, 0)))  # $0.15 so far
    record_batch(_batch("batch_unpriced", model="acme-model", completed_at=today))
    # Failed validation: no model known and no token used. It cost nothing, so the strip does not leave it out.
    record_batch(_batch("batch_invalid", status="failed", model="", failed_at=today, usage=(0, 0, 0)))
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if day_start > month_start:  # Not on the 1st: a batch finished earlier this month counts for the month only.
        earlier = int((day_start - timedelta(seconds=30)).timestamp())
        record_batch(_batch("batch_earlier", completed_at=earlier, usage=(0, 0, 1_000_000)))  # $0.30
    last_month = int((month_start - timedelta(days=2)).timestamp())
    record_batch(_batch("batch_last_month", completed_at=last_month, usage=(10_000_000, 0, 0)))

    spending = figures(today=timezone.localdate())
    assert spending.today.amount == Decimal("0.45")
    assert spending.month.amount == Decimal("0.45") + (Decimal("0.30") if day_start > month_start else 0)
    assert spending.running.amount == Decimal("0.15")
    assert spending.unpriced_batches == 1 and spending.unpriced_models == "acme-model"

    strip = viewer_client.get("/batches/").text.split('id="summary-spent"')[1].split("</div>")[0]
    assert "$0.45" in strip and "$0.15 so far in running batches" in strip
    assert "leaves out 1 batch of acme-model" in strip and "no price known" in strip
    assert "unknown model" not in strip


def test_a_batch_counts_once_in_the_daily_totals_on_the_day_it_finished():
    finished = int(timezone.now().timestamp()) - 5
    record_batch(_batch("batch_a", status="in_progress", usage=(100, 0, 10)))
    assert not DailySpend.objects.exists()  # running batches are summed live, not in the daily totals
    record_batch(_batch("batch_a", completed_at=finished, usage=(1000, 100, 50)))
    record_batch(_batch("batch_a", completed_at=finished, usage=(1000, 100, 50)))  # seen again: no change
    record_batch(_batch("batch_b", completed_at=finished, usage=(1, 0, 1)))
    record_batch(_batch("batch_c", completed_at=finished, model="gpt-4.1", usage=(7, 0, 0)))
    totals = {row.model: row for row in DailySpend.objects.all()}
    assert set(totals) == {"gpt-4o-mini-2024-07-18", "gpt-4.1"}
    mini = totals["gpt-4o-mini-2024-07-18"]
    assert (mini.day, mini.batches, mini.input_tokens, mini.cached_input_tokens, mini.output_tokens) == (
        timezone.localdate(),
        2,
        1001,
        100,
        51,
    )


def test_rebuilding_and_bulk_imports_give_the_totals_that_recording_one_by_one_gives():
    def totals():
        return sorted(DailySpend.objects.values_list("day", "model", "batches", *TOKEN_FIELDS))

    finished = int(timezone.now().timestamp()) - 5
    yesterday = int((timezone.now() - timedelta(days=1)).timestamp())
    batches = [
        _batch("batch_a", completed_at=finished, usage=(1000, 100, 50)),
        _batch("batch_b", completed_at=finished, usage=(1, 0, 1)),
        _batch("batch_c", completed_at=yesterday, model="gpt-4.1", usage=(7, 0, 0)),
        _batch("batch_d", status="in_progress", usage=(5, 0, 5)),
    ]
    for batch in batches:
        record_batch(batch)
    one_by_one = totals()
    assert len(one_by_one) == 2

    assert DailySpend.rebuild() == 2
    assert totals() == one_by_one

    DailySpend.objects.all().delete()
    Batch.objects.all().delete()
    record_batches(batches, timezone.now())
    assert totals() == one_by_one


def test_a_later_observation_of_a_final_batch_corrects_its_share():
    yesterday = int((timezone.now() - timedelta(days=1)).timestamp())
    record_batch(_batch("batch_a", completed_at=yesterday, usage=(1000, 0, 50)))
    record_batch(_batch("batch_a", completed_at=yesterday, usage=(1200, 0, 60)))
    (row,) = DailySpend.objects.all()
    assert (row.batches, row.input_tokens, row.output_tokens) == (1, 1200, 60)


def test_a_price_changed_in_the_override_file_reprices_every_batch(settings, tmp_path, viewer_client):
    record_batch(_batch("batch_done", usage=(1_000_000, 0, 0)))
    assert Batch.objects.get().cost == Decimal("0.075")
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-4o-mini"]\ninput = "1"\noutput = "2"\n')
    settings.BATCHBOARD_PRICES = str(prices)
    assert Batch.objects.get().cost == Decimal("1")
    assert Batch.objects.cost_total().amount == Decimal("1")


def test_the_cost_of_a_set_of_batches_is_one_aggregate(django_assert_num_queries):
    for n in range(5):
        record_batch(_batch(f"batch_{n}", usage=(1_000_000, 0, 0)))
    record_batch(_batch("batch_x", model="acme-model"))
    with django_assert_num_queries(1):
        total = Batch.objects.cost_total()
    assert total.amount == Decimal("0.375") and total.batches == 6 and total.unpriced_batches == 1


@pytest.mark.parametrize("headers", [{}, {"HX-Request": "true"}], ids=["page", "fragment"])
def test_the_cost_column_and_summary_cost_no_query_per_row(viewer_client, django_assert_num_queries, headers):
    def record(start, stop):
        for n in range(start, stop):
            model = ("gpt-4o-mini-2024-07-18", "gpt-4.1", "acme-model")[n % 3]
            status = "completed" if n % 2 else "in_progress"
            record_batch(_batch(f"batch_{n:04d}", status=status, model=model, usage=(1000 * n, 10 * n, 100 * n)))

    record(0, 5)
    with CaptureQueriesContext(connection) as few:
        viewer_client.get("/batches/", headers=headers)
    record(5, 120)
    with django_assert_num_queries(len(few)):
        response = viewer_client.get("/batches/", headers=headers)
    assert "no price known" in response.text and "so far" in response.text
    assert 'id="no-price-batch_0119"' in response.text  # links in the polled table keep focus by their id


def test_the_prices_page_shows_the_table_its_source_and_the_setting(settings, tmp_path, viewer_client):
    page = viewer_client.get("/batches/prices/").text
    assert "gpt-4o-mini" in page and "$0.075" in page and "as of 2025-08" in page
    assert "BATCHBOARD_PRICES" in page and "is not set" in page
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."acme-model"]\ninput = "3"\noutput = "4"\n')
    settings.BATCHBOARD_PRICES = str(prices)
    page = viewer_client.get("/batches/prices/").text
    row = page.split('id="price-acme-model"')[1].split("</tr>")[0]
    assert "$3" in row and "BATCHBOARD_PRICES" in row
    assert str(tmp_path) not in page  # the server's paths stay private


def test_the_prices_page_needs_a_login(client):
    response = client.get("/batches/prices/")
    assert response.status_code == 302 and "/login" in response["Location"]


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_usage_and_daily_totals_from_stored_payloads():
    from django.db.migrations.executor import MigrationExecutor

    before = [("batches", "0005_batch_verbose_name_plural")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    OldBatch = executor.loader.project_state(before).apps.get_model("batches", "Batch")
    now = timezone.now()
    for batch_id, usage in (("batch_new", {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                                            "output_tokens": 5}), ("batch_old", None)):  # fmt: skip
        OldBatch.objects.create(
            batch_id=batch_id, status="completed", is_terminal=True, model="gpt-4o-mini", created_at=now,
            finished_at=now, payload={"id": batch_id, "usage": usage}, payload_hash=batch_id,
        )  # fmt: skip

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    # On to the latest migrations (through 0006's data migration), so the current models match the tables after.
    executor.migrate(executor.loader.graph.leaf_nodes())

    rows = {row.batch_id: row for row in Batch.objects.all()}
    assert (rows["batch_new"].input_tokens, rows["batch_new"].cached_input_tokens, rows["batch_new"].output_tokens) == (
        10,
        4,
        5,
    )
    assert rows["batch_old"].input_tokens is None
    (total,) = DailySpend.objects.all()
    assert (total.day, total.model, total.batches, total.input_tokens) == (
        timezone.localdate(now),
        "gpt-4o-mini",
        1,
        10,
    )
