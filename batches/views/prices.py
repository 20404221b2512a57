"""The prices page: the Batch price table in effect, where it comes from, and how an operator changes it."""

from django.shortcuts import render
from django.views.decorators.http import require_safe

from batches.pricing import PRICES_SETTING, SHIPPED_PRICES, price_table


@require_safe
def price_list(request):
    table = price_table()
    context = {
        "table": table,
        "prices": sorted(table.prices.values(), key=lambda price: price.model),
        "setting": PRICES_SETTING,
        "shipped_name": f"batches/data/{SHIPPED_PRICES.name}",
    }
    return render(request, "batches/prices.html", context)
