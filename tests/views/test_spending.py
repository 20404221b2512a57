"""Spend per connection and per team: the spending page, its CSV, the summary strip and the monthly budget banner."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches import services
from batches.models import Connection, DailySpend, record_batch
from batches.pricing import CostTotal
from batches.spending import NEAR_BUDGET, NO_BUDGET, OVER_BUDGET, UNDER_BUDGET, budget_of, budget_state, report_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]

# Frozen at noon on 10 March 2026 (in UTC, the tests' time zone): "this month" is 1-10 March, "last month" February.
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
# gpt-4o-mini's batch price is $0.075 per million input tokens: 1M input tokens cost $0.075.
MILLION = 1_000_000


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def _batch(batch_id, *, finished=None, input_tokens, model="gpt-4o-mini"):
    """A batch as the API describes it: completed at `finished` with that usage, or running (finished=None)."""
    created = int(((finished or NOW) - timedelta(hours=2)).timestamp())
    payload = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "model": model,
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": "completed" if finished else "in_progress",
        "created_at": created,
        "in_progress_at": created + 5,
        "expires_at": created + 86_400,
        "request_counts": {"total": 10, "completed": 10 if finished else 3, "failed": 0},
        "metadata": {},
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens,
        },
    }
    if finished:
        payload["completed_at"] = int(finished.timestamp())
    return services.ApiBatch.from_api(payload)


def _day(month, day, hour=9):
    return datetime(2026, month, day, hour, 0, tzinfo=UTC)


@pytest.fixture
def org(frozen, django_user_model):
    """Two connections, three teams and their members, and a spend history:

    research ($1 a month): today $0.30, 2 March $0.60, 20 February $0.15, January $7.50 (too old), $0.075 running;
    vision (no budget): today $0.075 and an unpriced batch, 3 February $1.50;
    default (open to everyone): 5 March $0.15.
    Teams: "Research team" views research, "Vision team" views vision, "Platform" creates on research and cancels on
    vision (both).
    """
    research = Connection.objects.create(name="Research", slug="research", monthly_budget=Decimal("1.00"))
    vision = Connection.objects.create(name="Vision", slug="vision")
    default = Connection.objects.default()
    research_team = Group.objects.create(name="Research team")
    vision_team = Group.objects.create(name="Vision team")
    platform = Group.objects.create(name="Platform")
    research.view_teams.add(research_team)
    vision.view_teams.add(vision_team)
    research.create_teams.add(platform)
    vision.cancel_teams.add(platform)

    record_batch(_batch("batch_r_today", finished=_day(3, 10), input_tokens=4 * MILLION), connection=research)
    record_batch(_batch("batch_r_march", finished=_day(3, 2), input_tokens=8 * MILLION), connection=research)
    record_batch(_batch("batch_r_feb", finished=_day(2, 20), input_tokens=2 * MILLION), connection=research)
    record_batch(_batch("batch_r_jan", finished=_day(1, 15), input_tokens=100 * MILLION), connection=research)
    record_batch(_batch("batch_r_running", input_tokens=1 * MILLION), connection=research)
    record_batch(_batch("batch_v_today", finished=_day(3, 10), input_tokens=1 * MILLION), connection=vision)
    record_batch(
        _batch("batch_v_custom", finished=_day(3, 10), input_tokens=5 * MILLION, model="acme-model"), connection=vision
    )
    record_batch(_batch("batch_v_feb", finished=_day(2, 3), input_tokens=20 * MILLION), connection=vision)
    record_batch(_batch("batch_d_march", finished=_day(3, 5), input_tokens=2 * MILLION), connection=default)

    def member(username, *teams, **flags):
        user = django_user_model.objects.create_user(username=username, password="pw", **flags)
        user.groups.add(*teams)
        return user

    return {
        "research": research,
        "vision": vision,
        "default": default,
        "alice": member("alice", research_team),
        "bob": member("bob", vision_team),
        "carol": member("carol", platform),
        "sam": member("sam", research_team, is_staff=True),
        "root": member("root", is_superuser=True, is_staff=True),
    }


def _get(client, user, url, **headers):
    client.force_login(user)
    return client.get(url, headers=headers)


def _csv(client, user):
    response = _get(client, user, "/batches/spending.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "no-store" in response["Cache-Control"]
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def _figures(rows, scope, name):
    (row,) = [row for row in rows if row["scope"] == scope and row["name"] == name]
    return {key: Decimal(row[f"{key}_usd"]) for key in ("today", "this_month", "last_month", "running_so_far")} | {
        "unpriced": int(row["unpriced_batches"]),
        "connections": row["connections"].split(),
    }


def test_it_gives_each_connection_today_this_month_last_month_and_running(org):
    report = report_for(org["root"], today=timezone.localdate())
    spends = {spend.connection.slug: spend.figures for spend in report.connections}
    research, vision, default = spends["research"], spends["vision"], spends["default"]
    assert research.today.amount == Decimal("0.3")
    assert research.month.amount == Decimal("0.9")  # today's and 2 March's
    assert research.last_month.amount == Decimal("0.15")  # not January's
    assert research.running.amount == Decimal("0.075")
    assert vision.today.amount == Decimal("0.075") and vision.today.unpriced_batches == 1
    assert vision.today.unpriced_models == ("acme-model",)
    assert vision.last_month.amount == Decimal("1.5")
    assert default.today.amount == 0 and default.month.amount == Decimal("0.15")
    # The total counts each connection once.
    assert report.total.month.amount == Decimal("0.9") + Decimal("0.075") + Decimal("0.15")
    assert report.total.last_month.amount == Decimal("1.65")


def test_a_teams_spend_is_its_connections_and_a_shared_connection_counts_in_both(org):
    report = report_for(org["root"], today=timezone.localdate())
    teams = {team.name: team for team in report.teams}
    assert list(teams) == ["Platform", "Research team", "Vision team"]
    assert [spend.connection.slug for spend in teams["Platform"].connections] == ["research", "vision"]
    assert teams["Platform"].figures.month.amount == Decimal("0.975")
    assert teams["Research team"].figures.month.amount == Decimal("0.9")
    assert teams["Vision team"].figures.last_month.amount == Decimal("1.5")
    # research counts for Platform and for Research team: the teams add up to more than the total.
    team_sum = sum(team.figures.month.amount for team in report.teams)
    assert team_sum == Decimal("1.95") > report.total.month.amount
    # The default connection, open to everyone, is granted to no team: it is in the total only.
    assert all("default" not in [s.connection.slug for s in team.connections] for team in report.teams)


def test_the_page_shows_a_viewer_their_connections_and_teams_only(client, org):
    page = _get(client, org["alice"], "/batches/spending/").text
    research_row = page.split('id="connection-research"')[1].split("</tr>")[0]
    assert "$0.30" in research_row and "$0.90" in research_row and "$0.15" in research_row
    assert "90 % of $1" in research_row
    assert 'id="connection-default"' in page
    assert "Vision" not in page and "vision" not in page and "$1.50" not in page
    teams = page.split('id="spending-teams"')[1]
    assert "Research team" in teams and "Platform" not in teams
    assert "counts in both" in page and "each connection once" in page
    assert "only superusers see every team" in page


def test_staff_see_their_own_teams_and_superusers_every_team(client, org):
    staff = _get(client, org["sam"], "/batches/spending/").text.split('id="spending-teams"')[1]
    assert "Research team" in staff and "Platform" not in staff and "Vision team" not in staff
    root = _get(client, org["root"], "/batches/spending/").text
    teams = root.split('id="spending-teams"')[1]
    assert "Research team" in teams and "Platform" in teams and "Vision team" in teams
    assert "As a superuser you see every team" in root


def test_the_csv_has_a_row_per_connection_team_and_the_total(client, org):
    rows = _csv(client, org["carol"])
    assert [(row["scope"], row["name"]) for row in rows] == [
        ("connection", "default"),
        ("connection", "Research"),
        ("connection", "Vision"),
        ("team", "Platform"),
        ("total", "every connection, each once"),
    ]
    assert all(row["as_of"] == "2026-03-10" for row in rows)
    research = _figures(rows, "connection", "Research")
    assert research == {
        "today": Decimal("0.3"),
        "this_month": Decimal("0.9"),
        "last_month": Decimal("0.15"),
        "running_so_far": Decimal("0.075"),
        "unpriced": 0,
        "connections": ["research"],
    }
    (research_row,) = [row for row in rows if row["name"] == "Research"]
    assert research_row["monthly_budget_usd"] == "1.00" and research_row["budget_used_percent"] == "90"
    vision = _figures(rows, "connection", "Vision")
    assert vision["unpriced"] == 1
    platform = _figures(rows, "team", "Platform")
    assert platform["this_month"] == Decimal("0.975") and platform["connections"] == ["research", "vision"]
    total = _figures(rows, "total", "every connection, each once")
    assert total["this_month"] == Decimal("1.125") and total["last_month"] == Decimal("1.65")


def test_a_viewer_of_one_connection_never_sees_anothers_spend(client, org):
    # alice views first, so that a shared rendering or cached figure would reach bob if the scope were not in the key.
    _get(client, org["alice"], "/batches/spending/")
    _get(client, org["alice"], "/batches/")
    bob_rows = _csv(client, org["bob"])
    assert {row["name"] for row in bob_rows} == {"default", "Vision", "Vision team", "every connection, each once"}
    total = _figures(bob_rows, "total", "every connection, each once")
    assert total["this_month"] == Decimal("0.075") + Decimal("0.15")
    page = _get(client, org["bob"], "/batches/spending/").text
    assert "Research" not in page and "research" not in page
    listing = _get(client, org["bob"], "/batches/").text
    strip = listing.split('id="summary-spent"')[1].split("</div>")[0]
    assert "Research" not in strip and "$0.08" in strip  # vision's $0.075 today, not research's $0.30
    assert "budget-banner" not in listing and "monthly budget" not in listing
    fragment = _get(client, org["bob"], "/batches/", **{"HX-Request": "true"}).text
    assert "Research" not in fragment and "budget-banner" not in fragment


def test_the_strip_shows_the_periods_and_the_budgets_used(client, org):
    listing = _get(client, org["alice"], "/batches/").text
    strip = listing.split('id="summary-spent"')[1].split("</div>")[0]
    assert "$0.30" in strip  # today: research's only (default had nothing today)
    assert "$1.05 this month" in strip and "$0.15 last month" in strip
    assert "$0.08 so far in running batches" in strip
    assert "Research: 90 % of $1 this month" in strip
    assert 'href="/batches/spending/"' in strip


def test_the_list_shows_a_banner_from_80_percent_of_a_monthly_budget(client, org):
    banner = 'id="budget-banner-research"'
    page = _get(client, org["alice"], "/batches/").text
    assert banner in page
    text = page.split(banner)[1].split("</p>")[0]
    assert "Research</strong> has used 90 % of its monthly budget of $1." in text and "over budget" not in text
    fragment = _get(client, org["alice"], "/batches/", **{"HX-Request": "true"}).text
    assert banner in fragment  # the poll keeps it current

    org["research"].monthly_budget = Decimal("0.90")  # an admin's change shows at once, though no batch changed
    org["research"].save()
    page = _get(client, org["alice"], "/batches/").text
    text = page.split(banner)[1].split("</p>")[0]
    assert "has used 100 % of its monthly budget of $0.90: it is over budget" in text

    org["research"].monthly_budget = Decimal("1.20")  # 75 %: under the mark
    org["research"].save()
    page = _get(client, org["alice"], "/batches/").text
    assert banner not in page and "75 % of $1.20" in page


def test_budget_state_is_spent_budget_percent_and_level(org):
    spent, budget, percent, level = budget_state(org["research"])
    assert (spent, budget, percent, level) == (Decimal("0.9"), Decimal("1.00"), 90, NEAR_BUDGET)
    assert budget_state(org["vision"]) == (Decimal("0.075"), None, None, NO_BUDGET)
    # Another month: March's spend is last month's by then.
    april = budget_state(org["research"], today=datetime(2026, 4, 2).date())
    assert april == (Decimal(0), Decimal("1.00"), 0, UNDER_BUDGET)


@pytest.mark.parametrize(
    ("spent", "budget", "percent", "level"),
    [
        ("79.99", "100", 79, UNDER_BUDGET),
        ("80", "100", 80, NEAR_BUDGET),
        ("99.999", "100", 99, NEAR_BUDGET),
        ("100", "100", 100, OVER_BUDGET),
        ("250", "100", 250, OVER_BUDGET),
        ("5", None, None, NO_BUDGET),
        ("5", "0", None, NO_BUDGET),
    ],
)
def test_the_budget_marks_are_80_and_100_percent(spent, budget, percent, level):
    state = budget_of(Decimal(budget) if budget else None, CostTotal(amount=Decimal(spent)))
    assert (state.percent, state.level) == (percent, level)


def test_the_csv_cells_never_run_as_formulas(client, org):
    Group.objects.filter(name="Platform").update(name="=HYPERLINK(evil)")
    rows = _csv(client, org["carol"])
    assert "'=HYPERLINK(evil)" in {row["name"] for row in rows}


def test_a_viewer_of_nothing_sees_an_empty_page(client, org, django_user_model):
    nobody = django_user_model.objects.create_user(username="nobody", password="pw")
    Connection.objects.filter(slug="default").update(open_to_everyone=False)
    page = _get(client, nobody, "/batches/spending/").text
    assert "You may not see any connection yet" in page and "No team of yours" in page
    rows = _csv(client, nobody)
    assert [row["scope"] for row in rows] == ["total"] and Decimal(rows[0]["this_month_usd"]) == 0


@pytest.mark.parametrize("url", ["/batches/spending/", "/batches/spending.csv"])
def test_the_spending_pages_need_a_login(client, url):
    response = client.get(url)
    assert response.status_code == 302 and "/login" in response["Location"]


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/batches/spending/", {}),
        ("/batches/spending.csv", {}),
        ("/batches/", {}),
        ("/batches/", {"HX-Request": "true"}),
    ],
    ids=["page", "csv", "list", "list-fragment"],
)
def test_the_queries_do_not_grow_with_the_batches(client, org, django_assert_num_queries, url, headers):
    def record(start, stop):
        for n in range(start, stop):
            connection = org["research"] if n % 2 else org["vision"]
            finished = _day(3 if n % 3 else 2, 1 + n % 9) if n % 5 else None
            record_batch(_batch(f"batch_n{n:04d}", finished=finished, input_tokens=1000 * n), connection=connection)

    record(0, 5)
    client.force_login(org["carol"])
    with CaptureQueriesContext(db_connection) as few:
        client.get(url, headers=headers)
    record(5, 80)
    with django_assert_num_queries(len(few)):
        response = client.get(url, headers=headers)
    assert response.status_code == 200


def test_days_are_the_dashboards_whatever_the_viewers_time_zone(org):
    # 11:00 UTC on 10 March is already 11 March in Auckland (UTC+13): a batch recorded during the request of a viewer
    # there (a cancel's answer, a refresh) still counts on the dashboard's day, where the sync loop would count it.
    with timezone.override("Pacific/Auckland"):
        record_batch(
            _batch("batch_r_auckland", finished=datetime(2026, 3, 10, 11, tzinfo=UTC), input_tokens=MILLION),
            connection=org["research"],
        )
        assert DailySpend.day_of() == date(2026, 3, 10)
        report = report_for(org["root"], today=DailySpend.day_of())
    assert DailySpend.objects.get(connection=org["research"], day=date(2026, 3, 10)).batches == 2
    (research,) = [spend for spend in report.connections if spend.connection.slug == "research"]
    assert research.figures.today.amount == Decimal("0.3") + Decimal("0.075")
