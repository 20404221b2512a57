"""What several views share: a batch refreshed for display, or the page that says why there is none."""

from django.http import Http404
from django.shortcuts import render

from batches import lookups, services
from batches.freshness import Freshness
from batches.models import Batch


def refreshed_batch(request, batch_id: str) -> tuple[Batch | None, Freshness]:
    """The batch, refreshed when it can still change; a 404 for an id neither the cache nor the API knows.

    None (with the reason in the Freshness) when the cache has never seen it and the API cannot be asked.
    """
    try:
        return lookups.refresh_batch(batch_id, user_key=user_key(request))
    except services.NotFound:
        raise Http404(f"There is no batch {batch_id}.") from None


def user_key(request) -> str:
    """Whose per-minute limit of upstream-causing requests this request counts against."""
    return f"user:{request.user.pk}"


def unreachable(request, batch_id: str, freshness: Freshness):
    return render(request, "batches/unreachable.html", {"batch_id": batch_id, "freshness": freshness}, status=503)
