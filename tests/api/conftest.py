"""Tokens and clients for the JSON API's tests: a token is sent as a real client sends it, in the Authorization
header of an HTTP request to the test client (and to the live server where the sandbox answers upstream)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from api.models import SCOPES, ApiToken


def make_token(user, *scopes, name="ci-deploy", days=30) -> tuple[ApiToken, str]:
    return ApiToken.make(user, name=name, scopes=scopes or SCOPES, expires_at=timezone.now() + timedelta(days=days))


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


class TokenClient(Client):
    """A test client that sends a token with every request and no cookie: a script, not a browser."""

    def __init__(self, secret: str, **kwargs):
        super().__init__(headers=bearer(secret), **kwargs)


@pytest.fixture
def operator_token(operator):
    return make_token(operator)


@pytest.fixture
def token_client(operator_token):
    return TokenClient(operator_token[1])


def error_of(response, status: int) -> dict:
    """The one error shape, with `status`."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["message"]
    return body["error"]
