"""Cancelling batches: one, with a confirmation step, or several at once."""

from django.http import HttpResponse
from django.views.decorators.http import require_http_methods, require_POST


@require_http_methods(["GET", "POST"])
def batch_cancel(request, batch_id):
    return HttpResponse(status=501)


@require_POST
def batch_bulk_cancel(request):
    return HttpResponse(status=501)
