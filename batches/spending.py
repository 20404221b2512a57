"""Spend per connection and per team (today, this month, last month) from the daily totals, and monthly budgets.

A connection's spend is the cost of its batches that finished in the period (every final batch: cancelled and expired
ones bill the requests that ran), from the DailySpend rows, priced with batches.pricing; running batches' cost so far
is kept apart. A team's spend is the spend of the connections granted to it (view, cancel or create): a connection
granted to two teams counts in both, and an overall total counts each connection once. A viewer sees the connections
they may view (batches.access) and the teams they belong to; only a superuser sees every team. Staff status opens the
admin, not the data, so it shows no other team.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import NamedTuple

from django.core.cache import cache
from django.db import models

from batches import access
from batches.models import TOKEN_FIELDS, VIEW_GRANTS, Batch, Connection, DailySpend, data_version
from batches.pricing import CostTotal, format_money

PERIODS = ("today", "month", "last_month")
# The periods each part of the daily totals (daily_rows) counts in.
DAILY_PARTS = {"today": ("today", "month"), "earlier": ("month",), "last_month": ("last_month",)}
# A connection's monthly budget raises a banner on the list at these shares of it.
WARNING_PERCENT = 80
EXCEEDED_PERCENT = 100
NO_BUDGET, UNDER_BUDGET, NEAR_BUDGET, OVER_BUDGET = "", "ok", "warning", "exceeded"
STRIP_BUDGETS = 3
# The daily totals are kept per data version, which every recorded batch moves (and with it the daily totals): at most
# this long, like the list's other per-version figures.
CACHE_SECONDS = 300


class BudgetState(NamedTuple):
    """This month's spend of one connection against its monthly budget. `percent` is rounded down (so "79 %" never
    comes with a warning) and None without a budget; `level` is NO_BUDGET, UNDER_BUDGET, NEAR_BUDGET (from
    WARNING_PERCENT) or OVER_BUDGET (from EXCEEDED_PERCENT)."""

    spent: Decimal
    budget: Decimal | None
    percent: int | None
    level: str

    @property
    def alerting(self) -> bool:
        return self.level in (NEAR_BUDGET, OVER_BUDGET)

    @property
    def budget_label(self) -> str:
        """The budget as people write it: "$500" for whole dollars, else with its cents."""
        if self.budget is None:
            return ""
        if self.budget == self.budget.to_integral_value():
            return f"${self.budget:,.0f}"
        return format_money(self.budget)

    @property
    def bar_width(self) -> int:
        return min(self.percent or 0, 100)


def budget_of(budget: Decimal | None, month: CostTotal) -> BudgetState:
    """The budget state of a month's spend; a budget of zero or less counts as none (nothing could be shown of it)."""
    if budget is None or budget <= 0:
        return BudgetState(month.amount, None, None, NO_BUDGET)
    percent = int(month.amount * 100 / budget)
    if percent >= EXCEEDED_PERCENT:
        level = OVER_BUDGET
    elif percent >= WARNING_PERCENT:
        level = NEAR_BUDGET
    else:
        level = UNDER_BUDGET
    return BudgetState(month.amount, budget, percent, level)


def budget_state(connection: Connection, today: date | None = None) -> BudgetState:
    """(spent, budget, percent, level) of `connection` this month: one small aggregate of its DailySpend rows (one
    per day and model). For code outside a page, such as a notification of the 80 and 100 % marks."""
    today = today or DailySpend.day_of()
    rows = (
        DailySpend.objects.filter(connection=connection, day__gte=today.replace(day=1), day__lte=today)
        .order_by()
        .values("model")
        .annotate(batches=models.Sum("batches"), **{name: models.Sum(name) for name in TOKEN_FIELDS})
    )
    return budget_of(connection.monthly_budget, CostTotal.of(rows))


@dataclass(frozen=True)
class Figures:
    """The spend of some connections in each period, and their running batches' cost so far."""

    today: CostTotal = field(default_factory=CostTotal)
    month: CostTotal = field(default_factory=CostTotal)  # from the 1st to today, today included
    last_month: CostTotal = field(default_factory=CostTotal)
    running: CostTotal = field(default_factory=CostTotal)

    def __add__(self, other: Figures) -> Figures:
        return Figures(*(getattr(self, name) + getattr(other, name) for name in (*PERIODS, "running")))

    @property
    def unpriced_batches(self) -> int:
        """Batches the amounts leave out (today's are among the month's)."""
        return self.month.unpriced_batches + self.last_month.unpriced_batches + self.running.unpriced_batches

    @property
    def unpriced_models(self) -> str:
        return ", ".join(
            sorted({*self.month.unpriced_models, *self.last_month.unpriced_models, *self.running.unpriced_models})
        )


@dataclass(frozen=True)
class ConnectionSpend:
    connection: Connection
    figures: Figures

    @property
    def budget(self) -> BudgetState:
        return budget_of(self.connection.monthly_budget, self.figures.month)


@dataclass(frozen=True)
class TeamSpend:
    name: str
    connections: list[ConnectionSpend]
    figures: Figures


@dataclass(frozen=True)
class SpendingReport:
    """What the spending page, its CSV, the summary strip and the budget banner show to one viewer."""

    today: date
    connections: list[ConnectionSpend]
    total: Figures  # each connection once
    teams: list[TeamSpend] | None = None  # None: not asked for (the summary strip)
    budgets: list[ConnectionSpend] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "budgets", [spend for spend in self.connections if spend.budget.budget is not None])

    @property
    def month_start(self) -> date:
        return self.today.replace(day=1)

    @property
    def last_month_start(self) -> date:
        return self.last_month_end.replace(day=1)

    @property
    def last_month_end(self) -> date:
        return self.month_start - timedelta(days=1)

    @property
    def budgets_most_used(self) -> list[ConnectionSpend]:
        """The STRIP_BUDGETS most used monthly budgets, for the summary strip (the spending page shows every one)."""
        return sorted(self.budgets, key=lambda spend: -(spend.budget.percent or 0))[:STRIP_BUDGETS]

    @property
    def budget_alerts(self) -> list[ConnectionSpend]:
        """The connections at or past WARNING_PERCENT of their monthly budget, the furthest first."""
        alerts = [spend for spend in self.budgets if spend.budget.alerting]
        return sorted(alerts, key=lambda spend: -(spend.budget.percent or 0))


def figures(*, today: date, connection_ids: list[int] | None = None) -> Figures:
    """The spend of these connections (None: every one) added up, without a viewer or a cache (benchmarks, tools)."""
    by_connection = _figures_by_connection(daily_rows(connection_ids, today), running_rows(connection_ids))
    return sum(by_connection.values(), Figures())


def report_for(
    user, *, today: date, daily: list[dict] | None = None, running: list[dict] | None = None, teams: bool = True
) -> SpendingReport:
    """The spend `user` may see: per connection they may view, overall (each connection once) and, with `teams`, per
    team they belong to (every team for a superuser).

    Two aggregates: the daily totals (a few DailySpend rows per connection and day), shared by every viewer with the
    same scope until the data changes (data_version()), or `daily` if the caller keeps them itself (daily_rows(): the
    list keeps them until a batch becomes final); and the running batches per connection and model, read per request
    (an index seek over the running ones), or `running` if the caller has them (running_rows(): the list shares them
    per data version, batches.list_figures). Prices apply per request, so a changed price file shows at once.
    Teams and budgets are read per request: an admin's change to either moves no data version.
    """
    visible = access.connections(user)
    connection_ids = access.visible_connection_ids(user)
    if daily is None:
        daily = _cached_daily_rows(access.scope_key(user), connection_ids, today, data_version())
    if running is None:
        running = running_rows(connection_ids)
    by_connection = _figures_by_connection(daily, running)
    spends = [
        ConnectionSpend(connection, by_connection.get(connection.pk, Figures()))
        for connection in sorted(visible, key=lambda connection: (connection.name.casefold(), connection.slug))
    ]
    total = sum((spend.figures for spend in spends), Figures())
    return SpendingReport(
        today=today, connections=spends, total=total, teams=_teams_of(user, spends) if teams else None
    )


def _cached_daily_rows(scope: str, connection_ids: list[int] | None, today: date, version: tuple) -> list[dict]:
    key = "batchboard:spending:" + hashlib.sha256(repr((scope, today.isoformat(), version)).encode()).hexdigest()
    rows = cache.get(key)
    if rows is None:
        rows = daily_rows(connection_ids, today)
        cache.set(key, rows, CACHE_SECONDS)
    return rows


def daily_rows(connection_ids: list[int] | None, today: date) -> list[dict]:
    """The token totals of each connection and model, per part of a period (one aggregate of the DailySpend rows
    since the 1st of last month, whose size follows connections times models, not batches; "today", "earlier" this
    month or "last_month"). They change only when a batch becomes final, or a final one is recorded again."""
    month_start = today.replace(day=1)
    last_month_start = (month_start - timedelta(days=1)).replace(day=1)
    daily = DailySpend.objects.filter(day__gte=last_month_start, day__lte=today)
    if connection_ids is not None:
        daily = daily.filter(connection_id__in=connection_ids)
    part = models.Case(
        models.When(day=today, then=models.Value("today")),
        models.When(day__gte=month_start, then=models.Value("earlier")),
        default=models.Value("last_month"),
    )
    rows = (
        daily.order_by()
        .annotate(part=part)
        .values("connection_id", "model", "part")
        .annotate(**{name: models.Sum(name) for name in ("batches", *TOKEN_FIELDS)})
    )
    return list(rows)


def running_rows(connection_ids: list[int] | None) -> list[dict]:
    """The running batches' tokens per connection and model: one aggregate over the batch_spending_by_connection
    index, whose size follows running batches, not batches."""
    running = Batch.objects.filter(is_terminal=False, input_tokens__isnull=False)
    if connection_ids is not None:
        running = running.filter(connection_id__in=connection_ids)
    rows = (
        running.order_by()
        .values("connection_id", "model")
        .annotate(batches=models.Count("id"), **{name: models.Sum(name) for name in TOKEN_FIELDS})
    )
    return list(rows)


def _figures_by_connection(daily: list[dict], running: list[dict]) -> dict[int, Figures]:
    grouped: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in daily:
        for period in DAILY_PARTS[row["part"]]:
            grouped[row["connection_id"]][period].append(row)
    for row in running:
        grouped[row["connection_id"]]["running"].append(row)
    return {
        connection_id: Figures(**{name: CostTotal.of(rows) for name, rows in periods.items()})
        for connection_id, periods in grouped.items()
    }


def _teams_of(user, spends: list[ConnectionSpend]) -> list[TeamSpend]:
    """The teams `user` sees (those they belong to; every one for a superuser) that are granted at least one
    connection, each with the spend of its connections: one query over the three grant tables."""
    by_id = {spend.connection.pk: spend for spend in spends}
    if not by_id:
        return []
    grants = []
    for name in VIEW_GRANTS:
        rows = getattr(Connection, name).through.objects.filter(connection_id__in=list(by_id))
        if not user.is_superuser:
            rows = rows.filter(group__user=user)
        grants.append(rows.values_list("group_id", "group__name", "connection_id"))
    granted: dict[tuple[int, str], set[int]] = defaultdict(set)
    for group_id, group_name, connection_id in grants[0].union(*grants[1:]):
        granted[(group_id, group_name)].add(connection_id)
    teams = []
    for (_group_id, group_name), connection_ids in granted.items():
        team_spends = [spend for spend in spends if spend.connection.pk in connection_ids]
        teams.append(TeamSpend(group_name, team_spends, sum((spend.figures for spend in team_spends), Figures())))
    return sorted(teams, key=lambda team: team.name.casefold())
