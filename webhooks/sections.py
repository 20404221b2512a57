"""The webhook receiver on the detail page (batches.sections): when the last webhook of the batch's connection
arrived, in the side column."""

from __future__ import annotations

from batches import sections
from webhooks.status import receiver_status


def last_received_context(request, batch) -> dict:
    return {"webhooks": receiver_status([batch.connection], named=False)}


def last_received_key(context: dict):
    return context["webhooks"].key


LAST_RECEIVED = sections.Section(
    name="webhooks.last_received",
    slot=sections.DETAIL_ASIDE,
    template="webhooks/_detail_last_received.html",
    context=last_received_context,
    key=last_received_key,
)
