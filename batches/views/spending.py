"""The spending page and its CSV: spend per connection and per team the viewer may see, and monthly budgets."""

from __future__ import annotations

import csv
import io

from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_safe

from batches.models import DailySpend
from batches.pricing import SMALL_AMOUNT_STEP
from batches.spending import Figures, SpendingReport, report_for
from batches.spreadsheets import inert_cell

CSV_COLUMNS = [
    "as_of",
    "scope",
    "name",
    "slug",
    "connections",
    "today_usd",
    "this_month_usd",
    "last_month_usd",
    "running_so_far_usd",
    "monthly_budget_usd",
    "budget_used_percent",
    "unpriced_batches",
    "unpriced_models",
]


@require_safe
def spending(request):
    report = report_for(request.user, today=DailySpend.day_of())
    context = {
        "spending": report,
        "superuser": request.user.is_superuser,
        "spending_time_zone": timezone.get_default_timezone_name(),
    }
    return render(request, "batches/spending.html", context)


@require_safe
def spending_csv(request):
    """A few rows (one per connection and team the viewer may see, and the total): built whole, not streamed."""
    report = report_for(request.user, today=DailySpend.day_of())
    text = io.StringIO()
    writer = csv.writer(text)
    text.write("\ufeff")  # spreadsheets then read it as UTF-8
    writer.writerow(CSV_COLUMNS)
    for row in _csv_rows(report):
        writer.writerow([inert_cell(value) for value in row])
    response = HttpResponse(text.getvalue(), content_type="text/csv; charset=utf-8")
    filename = f"batchboard-spending-{report.today.isoformat()}.csv"
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["Cache-Control"] = "private, no-store"
    return response


def _csv_rows(report: SpendingReport):
    day = report.today.isoformat()
    for spend in report.connections:
        budget = spend.budget
        yield [
            day,
            "connection",
            spend.connection.name,
            spend.connection.slug,
            spend.connection.slug,
            *_amounts(spend.figures),
            "" if budget.budget is None else str(budget.budget),
            "" if budget.percent is None else budget.percent,
            *_unpriced(spend.figures),
        ]
    for team in report.teams or ():
        slugs = " ".join(spend.connection.slug for spend in team.connections)
        yield [day, "team", team.name, "", slugs, *_amounts(team.figures), "", "", *_unpriced(team.figures)]
    slugs = " ".join(spend.connection.slug for spend in report.connections)
    total = report.total
    yield [day, "total", "every connection, each once", "", slugs, *_amounts(total), "", "", *_unpriced(total)]


def _amounts(figures: Figures) -> list[str]:
    totals = (figures.today, figures.month, figures.last_month, figures.running)
    return [str(total.amount.quantize(SMALL_AMOUNT_STEP)) for total in totals]


def _unpriced(figures: Figures) -> list:
    return [figures.unpriced_batches, figures.unpriced_models]
