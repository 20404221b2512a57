"""Top-level URLs: the dashboard and its results pages, read-only share links, login (a password or single sign-on),
logout and password change, the JSON API and its tokens, admin, health probes and metrics, and the built-in sandbox
API."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from accounts.views import LoginView, LogoutView
from audit.views import PasswordChangeView
from batches.views import health

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="batches:list", permanent=False)),
    path("batches/", include("batches.urls")),  # registers the batch_id converter used below
    path("batches/<batch_id:batch_id>/results/", include("results.urls")),
    path("batches/<batch_id:batch_id>/", include("retries.urls")),
    path("", include("sharing.urls")),  # /shared/<token>/..., and making and revoking links under a batch
    # Only these from django.contrib.auth.urls: password reset would send mail from an unthrottled public form.
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("accounts/", include("accounts.urls")),  # single sign-on: /accounts/oidc/login/ and its callback
    path("accounts/password_change/", PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("admin/", admin.site.urls),
    path("webhooks/", include("webhooks.urls")),
    path("notifications/", include("notifications.urls")),
    path("api/v1/", include("api.urls")),  # the JSON API: tokens or a session with CSRF
    path("api-tokens/", include("api.token_urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
]
if settings.SANDBOX_ENABLED:
    # Authenticated with well-known keys, so it is only served where it is the upstream (no real key): the API at
    # /sandbox/v1/ as OpenAI serves it, and at /sandbox/openai/v1/ as Azure OpenAI's v1 API does.
    urlpatterns.append(path("sandbox/", include("sandbox.urls")))
