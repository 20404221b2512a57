"""Top-level URLs: the dashboard, login, admin and the built-in sandbox API."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="batches:list", permanent=False)),
    path("batches/", include("batches.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
if settings.SANDBOX_ENABLED:
    # Bearer-authenticated with a well-known key, so it is only served where it is the upstream (no real key).
    urlpatterns.append(path("sandbox/v1/", include("sandbox.urls")))
