"""Values every page needs: sandbox mode for the banner, and the product version."""

from django.conf import settings


def batchboard(request):
    return {
        "sandbox_mode": settings.SANDBOX_MODE,
        "batchboard_version": settings.VERSION,
    }
