"""The audit log on the detail page (batches.sections): the batch's activity, in the side column."""

from __future__ import annotations

from audit.models import AuditEvent
from batches import sections

EVENTS_SHOWN = 20


def activity_context(request, batch) -> dict:
    events = list(AuditEvent.objects.for_batch(batch.batch_id, batch.connection_id)[: EVENTS_SHOWN + 1])
    return {"events": events[:EVENTS_SHOWN], "more": len(events) > EVENTS_SHOWN}


def activity_key(context: dict):
    return tuple(event.pk for event in context["events"])


ACTIVITY = sections.Section(
    name="audit.activity",
    slot=sections.DETAIL_ASIDE,
    template="audit/_batch_activity.html",
    context=activity_context,
    key=activity_key,
)
