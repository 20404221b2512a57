"""Values every page needs: sandbox mode, the product version, the API's health for the auth banner, Live settings."""

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from batches import access, freshness
from batches.views.live import live_of


def batchboard(request):
    return {
        "sandbox_mode": settings.SANDBOX_MODE,
        "batchboard_version": settings.VERSION,
        # Lazy: one small query, and only when a page shows the banner (to logged-in users); never an upstream call.
        # Over the connections the viewer sees: another team's failing connection is not their banner.
        "api_freshness": SimpleLazyObject(lambda: _freshness(request)),
        # Whether the navigation offers "New batch": the viewer may create on some connection.
        "may_create": SimpleLazyObject(lambda: _may_create(request)),
        # The viewer's Live settings for the live controls; views that poll replace it with their backoff.
        "live": live_of(request),
        # Lazy: one query, on full pages that show the navigation to a logged-in user.
        "saved_views": SimpleLazyObject(lambda: _saved_views(request)),
    }


def _freshness(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return freshness.list_freshness()
    return access.list_freshness_for(user)


def _may_create(request) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and access.connections(user, access.CREATE))


def _saved_views(request) -> list:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    return access.saved_views(user)
