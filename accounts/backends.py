"""The two ways in: a password (refused, when BATCHBOARD_LOCAL_LOGIN is off, to all but the break-glass user) and
the OpenID provider's callback (mozilla-django-oidc's backend, matching users by subject through accounts.identities).
"""

from __future__ import annotations

import logging

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts import provider
from accounts.claims import ClaimsRefused, identity_from_claims
from accounts.identities import SignInRefused, sign_in

logger = logging.getLogger(__name__)

# What the callback view shows a person the provider vouched for but who is not let in.
REFUSAL_ATTRIBUTE = "login_refused_because"


def password_login_allowed(username: str | None) -> bool:
    """Whether a password may log this user name in: always, unless BATCHBOARD_LOCAL_LOGIN is off; then only the
    break-glass user's (a superuser, checked by the backend)."""
    if settings.BATCHBOARD_LOCAL_LOGIN:
        return True
    return bool(settings.BATCHBOARD_BREAK_GLASS_USER) and username == settings.BATCHBOARD_BREAK_GLASS_USER


def is_provider_callback(request, credentials=None) -> bool:
    """django-axes' AXES_WHITELIST_CALLABLE: the provider's callback (which alone authenticates with a nonce) is not
    a password guess, and names no user to throttle, so axes would lock every sign-in from the address after a few
    refusals. The provider throttles its own logins; refusals still count towards BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS
    (audit.login_limit)."""
    return bool(credentials) and "nonce" in credentials and not credentials.get("username")


class LocalPasswordBackend(ModelBackend):
    """Django's user name and password check, off (but for the break-glass superuser) when BATCHBOARD_LOCAL_LOGIN
    is off: here, so the admin's login and any other form are refused too, not only the login page. A refusal is
    a failed login like a wrong password, so login throttling counts it."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None and password is None:
            return None  # not a password login (the provider's callback)
        if not password_login_allowed(username):
            return None
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None and not settings.BATCHBOARD_LOCAL_LOGIN and not user.is_superuser:
            return None
        return user


def _refuse(request, reason: str):
    setattr(request, REFUSAL_ATTRIBUTE, reason)
    # Stops the other backends and sends user_login_failed, so the audit log and throttling count it.
    raise PermissionDenied(reason)


class OidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's code flow, answering only its callback (which alone passes a nonce) and only when single
    sign-on is configured. The endpoints are looked up on use (accounts.provider), never when Django builds the
    backend for a password login. The ID token's issuer and audience are checked, which the library leaves out."""

    get_settings = staticmethod(provider.oidc_setting)

    def __init__(self, *args, **kwargs):
        self.UserModel = get_user_model()

    def _configure(self):
        super().__init__()

    def authenticate(self, request, **kwargs):
        if not settings.BATCHBOARD_OIDC_ENABLED or request is None or "nonce" not in kwargs:
            return None
        try:
            self._configure()
            return super().authenticate(request, **kwargs)
        except provider.ProviderUnavailable as exc:
            _refuse(request, str(exc))
        except (ClaimsRefused, SignInRefused) as exc:
            _refuse(request, str(exc))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            # Never the exception's text: the library puts the provider's answer in it.
            logger.warning("sign-in failed: the OpenID provider answered HTTP %s", status)
            _refuse(request, f"{settings.BATCHBOARD_OIDC_NAME} refused to complete the sign-in.")
        except (requests.RequestException, ValueError) as exc:
            logger.warning("sign-in failed: the OpenID provider could not be reached (%s)", type(exc).__name__)
            _refuse(request, f"{settings.BATCHBOARD_OIDC_NAME} cannot be reached right now.")
        except (SuspiciousOperation, jwt.PyJWTError) as exc:
            logger.warning("sign-in failed: the ID token was not accepted (%s)", type(exc).__name__)
            _refuse(request, f"The answer from {settings.BATCHBOARD_OIDC_NAME} could not be verified.")
        return None

    def get_user(self, user_id):
        # Django's check (the library's skips it): a user switched off in the admin loses their session at once.
        return ModelBackend.get_user(self, user_id)

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        issuer = settings.BATCHBOARD_OIDC_ISSUER
        if issuer and str(payload.get("iss", "")).rstrip("/") != issuer.rstrip("/"):
            raise SuspiciousOperation("The token's issuer is not the configured one.")
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.BATCHBOARD_OIDC_CLIENT_ID not in audiences:
            raise SuspiciousOperation("The token is not meant for this client.")
        return payload

    def get_or_create_user(self, access_token, id_token, payload):
        """The user for these claims (the ID token's, and the userinfo endpoint's on top: either may carry the
        groups), by subject; refused (SignInRefused, ClaimsRefused) as accounts.identities decides."""
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(userinfo, dict) or userinfo.get("sub") != payload.get("sub"):
            # OpenID Connect Core 5.3.2: userinfo about another subject must not be used.
            raise SuspiciousOperation("The userinfo answer is about another subject.")
        claims = {**payload, **userinfo}
        issuer = str(payload.get("iss") or settings.BATCHBOARD_OIDC_ISSUER)[:255]
        return sign_in(identity_from_claims(issuer, claims, settings.BATCHBOARD_OIDC_GROUPS_CLAIM))
