"""Single sign-on: /accounts/oidc/login/ starts it, /accounts/oidc/callback/ is the redirect URI to register at the
provider. Both answer 404 unless BATCHBOARD_OIDC_CLIENT_ID is set."""

from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("oidc/login/", views.oidc_login, name="oidc_login"),
    path("oidc/callback/", views.oidc_callback, name="oidc_callback"),
]
