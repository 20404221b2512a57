"""The detail page's lineage card and the results page's retry actions."""

from django import template

from batches.models import Reaction, ReactionState
from retries import auto
from retries.lineage import lineage
from retries.models import AutoRetry
from retries.selection import FILTER

register = template.Library()


@register.inclusion_tag("retries/_lineage.html", takes_context=True)
def lineage_card(context, batch):
    auto_retry = AutoRetry.objects.filter(parent=batch).first()
    waiting = None
    if auto_retry is None and auto.retries_left(batch.metadata):
        # Not sent yet: the reaction says what it waits for (the history import, its own link's check).
        waiting = Reaction.objects.filter(batch=batch, step=auto.STEP, state=ReactionState.PENDING).first()
    return {
        "batch": batch,
        "lineage": lineage(batch),
        "auto_retry": auto_retry,
        "auto_retry_waiting": waiting,
        "can_retry": context["perms"]["batches"]["create_batch"] if "perms" in context else False,
    }


@register.inclusion_tag("retries/_results_actions.html", takes_context=True)
def retry_actions(context, batch, result_filter, count):
    """Retry links on the results page: the current filter's lines, or a choice; and the job's final results."""
    return {
        "batch": batch,
        "filter": result_filter,
        "count": count,
        "filter_select": FILTER,
        "can_retry": context["perms"]["batches"]["create_batch"] if "perms" in context else False,
        "lineage": lineage(batch),
    }
