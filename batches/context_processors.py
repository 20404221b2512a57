"""Values every page needs: sandbox mode, the product version, and the API's health for the auth banner."""

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from batches import sync


def batchboard(request):
    return {
        "sandbox_mode": settings.SANDBOX_MODE,
        "batchboard_version": settings.VERSION,
        # Lazy: one small query, and only when a page shows the banner (to logged-in users); never an upstream call.
        "api_freshness": SimpleLazyObject(sync.list_freshness),
    }
