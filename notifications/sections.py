"""The Watch button in the detail page's side column (batches.sections): subscribe one of the viewer's own
destinations to this batch, or to its job."""

from __future__ import annotations

from batches import sections
from notifications.jobs import job_of
from notifications.models import Destination, Scope, Subscription


def watch_context(request, batch) -> dict:
    destinations = list(Destination.objects.filter(user=request.user).only("pk", "name", "paused_at"))
    job = job_of(batch)
    watching = list(
        Subscription.objects.filter(destination__in=destinations)
        .filter(_covers(batch, job))
        .values_list("destination__name", flat=True)
    )
    return {"watch": {"batch": batch, "destinations": destinations, "watching": watching, "job": job}}


def _covers(batch, job):
    from django.db.models import Q

    return Q(scope=Scope.BATCH, batch=batch) | Q(scope=Scope.JOB, job=job, connection=batch.connection_id)


def watch_key(context: dict):
    watch = context["watch"]
    return (tuple(destination.pk for destination in watch["destinations"]), tuple(watch["watching"]))


WATCH = sections.Section(
    name="notifications.watch",
    slot=sections.DETAIL_ASIDE,
    template="notifications/_watch.html",
    context=watch_context,
    key=watch_key,
    order=-1,  # first in the side column, under the batch's own cards: the on-call engineer's button
)
