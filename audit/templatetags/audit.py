"""`{% batch_activity batch_id %}`: the audit events of one batch, for its detail page."""

from django import template

from audit.models import AuditEvent

register = template.Library()
EVENTS_SHOWN = 20


@register.inclusion_tag("audit/_batch_activity.html")
def batch_activity(batch_id: str):
    events = list(AuditEvent.objects.for_batch(batch_id)[: EVENTS_SHOWN + 1])
    return {"events": events[:EVENTS_SHOWN], "more": len(events) > EVENTS_SHOWN}
