"""The batch list page and its live table fragment."""

from django.shortcuts import render
from django.views.decorators.http import require_safe
from django.views.decorators.vary import vary_on_headers

from batches import upstream
from batches.models import Batch


@require_safe
@vary_on_headers("HX-Request")
def batch_list(request):
    freshness = upstream.refresh_list()
    batches = Batch.objects.newest_first()[:200]
    return render(request, "batches/batch_list.html", {"batches": batches, "freshness": freshness})
