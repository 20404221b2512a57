"""Where each connection's calls go, and the keys kept for it.

A connection is defined in one of three places (Connection.source): the single-key settings (OPENAI_API_KEY,
OPENAI_BASE_URL, ...; the connection named "default", or the built-in sandbox without a key), the file named by
BATCHBOARD_CONNECTIONS (keys in environment variables it names), or the admin (keys encrypted at rest with
BATCHBOARD_ENCRYPTION_KEY, see batches.secrets). This module turns a Connection row into a services.Upstream.
"""

from __future__ import annotations

import os

from django.conf import settings

from batches import secrets, services
from batches.models import Connection, ConnectionKind, ConnectionSource


class KeyMissing(services.AuthenticationFailed):
    """The connection's key is not where its definition says (an unset variable, an unreadable stored key)."""


def _secret(connection: Connection, env_name: str, encrypted: str, what: str) -> str:
    if env_name:
        value = os.environ.get(env_name, "")
        if not value:
            raise KeyMissing(f"The {what} of connection {connection.slug!r} is not set: ${env_name} is empty.")
        return value
    if encrypted:
        try:
            return secrets.decrypt(encrypted)
        except secrets.Unreadable as exc:
            raise KeyMissing(f"The {what} of connection {connection.slug!r} cannot be read: {exc}") from None
    return ""


def upstream_of(connection: Connection) -> services.Upstream:
    """The connection's base URL, key, headers, auth style, id shapes and budget. A connection kept only for its
    history (no longer in the file; the default one without OPENAI_API_KEY beside a file) calls nowhere."""
    if not connection.configured:
        where = "OPENAI_API_KEY is not set" if connection.is_default else "the connections file no longer has it"
        raise KeyMissing(f"Connection {connection.slug!r} is kept for its history only: {where}.")
    if connection.source == ConnectionSource.SETTINGS:
        return services.Upstream(
            api_key=settings.OPENAI_API_KEY or settings.SANDBOX_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            organization=settings.OPENAI_ORG_ID,
            project=settings.OPENAI_PROJECT_ID,
            per_minute=connection.upstream_budget,
        )
    api_key = _secret(connection, connection.api_key_env, connection.api_key_encrypted, "API key")
    if not api_key:
        raise KeyMissing(f"Connection {connection.slug!r} has no API key.")
    return services.Upstream(
        api_key=api_key,
        base_url=connection.base_url,
        organization=connection.organization if connection.kind == ConnectionKind.OPENAI else "",
        project=connection.project if connection.kind == ConnectionKind.OPENAI else "",
        auth=services.API_KEY_HEADER if connection.kind == ConnectionKind.AZURE else services.BEARER,
        ids=connection.id_shapes,
        per_minute=connection.upstream_budget,
    )


def webhook_secret_of(connection: Connection) -> str:
    """The connection's webhook signing secret (whsec_...), or "" when none is configured."""
    if connection.source == ConnectionSource.SETTINGS:
        return settings.BATCHBOARD_WEBHOOK_SECRET
    return _secret(connection, connection.webhook_secret_env, connection.webhook_secret_encrypted, "webhook secret")
