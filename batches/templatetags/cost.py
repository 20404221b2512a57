"""Money on the pages: a batch's cost in the list, totals in the summary strip, "no price known" with its remedy."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.urls import reverse
from django.utils.html import format_html

from batches.pricing import PRICES_SETTING, cost_lines, format_money

register = template.Library()


@register.filter
def money(amount: Decimal | None) -> str:
    return "" if amount is None else format_money(amount)


@register.simple_tag
def no_price_known(model: str, element_id: str):
    """'no price known', linked to the prices page, which says how to add one with BATCHBOARD_PRICES.

    Every link in a polled fragment has an id, so that focus survives the swap."""
    return format_html(
        '<a class="no-price" id="{}" href="{}#add-prices" title="No price is known for {}: add it with {}">'
        "no price known</a>",
        element_id,
        reverse("batches:prices"),
        model or "this model",
        PRICES_SETTING,
    )


@register.simple_tag
def cost_cell(batch):
    """The list's cost column: the cost so far, '—' without usage, or 'no price known'."""
    if not batch.has_usage:
        return format_html('<span class="muted" title="{}">—</span>', "The API has reported no token usage yet")
    cost = batch.cost
    if cost is None:
        return no_price_known(batch.model, f"no-price-{batch.batch_id}")
    if batch.is_terminal:
        return format_money(cost)
    return format_html('{} <span class="muted">so far</span>', format_money(cost))


@register.simple_tag
def cost_breakdown(batch):
    """`{% cost_breakdown batch as breakdown %}`: the priced lines of a batch's usage, or None without a price."""
    price = batch.price
    if price is None or not batch.has_usage:
        return None
    return {
        "price": price,
        "lines": cost_lines(price, batch.input_tokens, batch.cached_input_tokens or 0, batch.output_tokens or 0),
        "total": batch.cost,
    }


@register.simple_tag
def spend_amount(total, *id_parts):
    """An amount of the spending page: the dollars and, when some batches have no price known, how many it leaves
    out (so it is a lower bound) with the remedy, linked by an id made of `id_parts`."""
    if not total.unpriced_batches:
        return format_html('<span class="spend-value">{}</span>', format_money(total.amount))
    models = ", ".join(total.unpriced_models)
    return format_html(
        '<span class="spend-value">{} <span class="spend-unpriced">leaves out {} batch{} of {}: {}</span></span>',
        format_money(total.amount),
        total.unpriced_batches,
        "" if total.unpriced_batches == 1 else "es",
        models,
        no_price_known(models, "-".join(["no-price", *map(str, id_parts)])),
    )


@register.simple_tag
def budget_bar(state):
    """How much of a monthly budget is used, as a bar (an SVG: the CSP forbids inline widths) with its text."""
    label = f"{state.percent} % of the monthly budget of {state.budget_label} used"
    return format_html(
        '<svg class="budget-bar budget-{}" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label="{}">'
        "<title>{}</title>"
        '<rect class="budget-track" x="0" y="0" width="100" height="8"></rect>'
        '<rect class="budget-used" x="0" y="0" width="{}" height="8"></rect>'
        "</svg>",
        state.level,
        label,
        label,
        state.bar_width,
    )
