"""Where the OpenID provider's endpoints are: each BATCHBOARD_OIDC_<NAME> given, else the issuer's discovery
document (/.well-known/openid-configuration), fetched on first use with a bounded timeout and kept in the shared
cache for an hour, so that neither startup nor each sign-in depends on the provider answering."""

from __future__ import annotations

import logging

import requests
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

DISCOVERY_TTL = 3600
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "end_session_endpoint")
REQUIRED = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint")


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be had; the message is for the person signing in."""


def _cache_key() -> str:
    return f"accounts:oidc-discovery:{settings.BATCHBOARD_OIDC_ISSUER}"


def _discover() -> dict[str, str]:
    issuer = settings.BATCHBOARD_OIDC_ISSUER
    found = cache.get(_cache_key())
    if found is not None:
        return found
    url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=(5, settings.BATCHBOARD_OIDC_TIMEOUT))
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("the OpenID provider's discovery document %s could not be read: %s", url, type(exc).__name__)
        raise ProviderUnavailable(f"{settings.BATCHBOARD_OIDC_NAME} cannot be reached right now.") from None
    if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        # The spec requires the document's issuer to be the one asked: anything else is someone else's provider.
        logger.warning("the discovery document at %s names another issuer", url)
        raise ProviderUnavailable(f"{settings.BATCHBOARD_OIDC_NAME} is misconfigured (another issuer).")
    found = {
        name: document[name]
        for name in ENDPOINTS
        if isinstance(document.get(name), str) and document[name].startswith(("https://", "http://"))
    }
    cache.set(_cache_key(), found, DISCOVERY_TTL)
    return found


def endpoints() -> dict[str, str]:
    """Every endpoint known, by its discovery name; the required ones always (else ProviderUnavailable)."""
    given = settings.BATCHBOARD_OIDC_ENDPOINTS
    found = dict(given)
    if settings.BATCHBOARD_OIDC_ISSUER and not all(name in given for name in ENDPOINTS):
        found = {**_discover(), **given}
    if not all(name in found for name in REQUIRED):
        raise ProviderUnavailable(f"{settings.BATCHBOARD_OIDC_NAME} is misconfigured (its endpoints are unknown).")
    return found


# mozilla-django-oidc's setting names for the endpoints, read through `oidc_setting`.
_LIBRARY_NAMES = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}


# ... and its client's settings, read from batchboard's own at each use (so a test's settings override is seen).
_CLIENT_SETTINGS = {
    "OIDC_RP_CLIENT_ID": "BATCHBOARD_OIDC_CLIENT_ID",
    "OIDC_RP_CLIENT_SECRET": "BATCHBOARD_OIDC_CLIENT_SECRET",
    "OIDC_RP_SCOPES": "BATCHBOARD_OIDC_SCOPES",
    "OIDC_RP_SIGN_ALGO": "BATCHBOARD_OIDC_SIGN_ALGO",
    "OIDC_TIMEOUT": "BATCHBOARD_OIDC_TIMEOUT",
}


def oidc_setting(name: str, *default):
    """mozilla-django-oidc's get_settings: its endpoints from here, its client's settings from batchboard's, the
    rest from Django's settings."""
    if name in _LIBRARY_NAMES:
        return endpoints().get(_LIBRARY_NAMES[name], *default)
    if name in _CLIENT_SETTINGS:
        return getattr(settings, _CLIENT_SETTINGS[name])
    from mozilla_django_oidc.utils import import_from_settings

    return import_from_settings(name, *default)
