"""The batch detail page, its live panel, and file downloads."""

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_safe
from django.views.decorators.vary import vary_on_headers

from batches import services, upstream


@require_safe
@vary_on_headers("HX-Request")
def batch_detail(request, batch_id):
    try:
        batch, freshness = upstream.refresh_batch(batch_id)
    except services.NotFound:
        raise Http404("No batch with this id.") from None
    if batch is None:
        return render(request, "batches/unreachable.html", {"batch_id": batch_id, "freshness": freshness}, status=503)
    return render(request, "batches/batch_detail.html", {"batch": batch, "freshness": freshness})


@require_safe
def batch_file(request, batch_id, kind):
    raise Http404("Not built yet.")
