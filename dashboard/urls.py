"""Top-level URLs: the dashboard, login, admin and the built-in sandbox API."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="batches:list", permanent=False)),
    path("batches/", include("batches.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("sandbox/v1/", include("sandbox.urls")),
]
