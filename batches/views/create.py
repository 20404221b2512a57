"""Creating a batch from a validated JSONL upload or an uploaded file id."""

from django.http import HttpResponse
from django.views.decorators.http import require_http_methods


@require_http_methods(["GET", "POST"])
def batch_create(request):
    return HttpResponse(status=501)
