"""The login page (the password form and the "Sign in with ..." button), the OpenID Connect sign-in and its callback,
and logout (at the provider too, when asked)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from accounts import provider
from accounts.backends import REFUSAL_ATTRIBUTE

OIDC_BACKEND = "accounts.backends.OidcBackend"


def _refused(request, reason: str, status: int):
    context = {"reason": reason, "sso_name": settings.BATCHBOARD_OIDC_NAME}
    return render(request, "accounts/refused.html", context, status=status)


class LoginView(auth_views.LoginView):
    """Django's login view, with the single sign-on button, and the password form only where it can be used:
    everywhere with BATCHBOARD_LOCAL_LOGIN on; with it off, only at ?local=1, for the break-glass user."""

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        local_asked = self.request.GET.get("local") == "1" or self.request.POST.get("local") == "1"
        context.update(
            sso_enabled=settings.BATCHBOARD_OIDC_ENABLED,
            sso_name=settings.BATCHBOARD_OIDC_NAME,
            local_login=settings.BATCHBOARD_LOCAL_LOGIN,
            password_form_shown=settings.BATCHBOARD_LOCAL_LOGIN or local_asked,
        )
        return context


class LogoutView(auth_views.LogoutView):
    """Django's logout; after a single sign-on session, with BATCHBOARD_OIDC_PROVIDER_LOGOUT, on to the provider's
    end_session_endpoint (which comes back to the login page), so the provider's session ends too."""

    def post(self, request, *args, **kwargs):
        signed_in_by_provider = request.session.get(BACKEND_SESSION_KEY) == OIDC_BACKEND
        response = super().post(request, *args, **kwargs)
        if signed_in_by_provider and settings.BATCHBOARD_OIDC_PROVIDER_LOGOUT:
            try:
                end_session = provider.endpoints().get("end_session_endpoint")
            except provider.ProviderUnavailable:
                end_session = None
            if end_session:
                back = request.build_absolute_uri(reverse("login"))
                query = urlencode({"client_id": settings.BATCHBOARD_OIDC_CLIENT_ID, "post_logout_redirect_uri": back})
                return HttpResponseRedirect(f"{end_session}{'&' if '?' in end_session else '?'}{query}")
        return response


class OidcLoginView(OIDCAuthenticationRequestView):
    """To the provider's sign-in, with `next` kept in the session (only a same-site one: the library checks it)."""

    get_settings = staticmethod(provider.oidc_setting)

    def __init__(self, **kwargs):
        # The endpoints are looked up in get(), where an unreachable provider can be answered with a page.
        for key, value in kwargs.items():
            setattr(self, key, value)

    def get(self, request):
        if not settings.BATCHBOARD_OIDC_ENABLED:
            raise Http404("Single sign-on is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = self.get_settings("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except provider.ProviderUnavailable as exc:
            return _refused(request, str(exc), status=503)
        self.OIDC_RP_CLIENT_ID = settings.BATCHBOARD_OIDC_CLIENT_ID
        return super().get(request)


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back: the user signed in and on to `next`, or a page saying why not."""

    get_settings = staticmethod(provider.oidc_setting)

    def get(self, request):
        if not settings.BATCHBOARD_OIDC_ENABLED:
            raise Http404("Single sign-on is not configured.")
        return super().get(request)

    def login_failure(self):
        if auth.SESSION_KEY in self.request.session:
            # Whoever was logged in in this browser is not any more: the sign-in that was asked for failed.
            auth.logout(self.request)
        reason = getattr(self.request, REFUSAL_ATTRIBUTE, "") or (
            f"The sign-in with {settings.BATCHBOARD_OIDC_NAME} was cancelled or did not complete. Try again."
        )
        return _refused(self.request, reason, status=403)


oidc_login = login_not_required(OidcLoginView.as_view())
oidc_callback = login_not_required(OidcCallbackView.as_view())
