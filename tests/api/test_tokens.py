"""Personal access tokens: stored hashed and shown once, scoped, expiring, revocable, rate limited, audited with their
name, never a way into the HTML pages; and a session that must send its CSRF token to change anything."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from api.models import ApiToken
from audit.models import Action, AuditEvent
from batches.models import record_batch
from tests.api.conftest import TokenClient, error_of, make_token
from tests.conftest import completed

pytestmark = pytest.mark.django_db


def test_it_stores_only_the_hash_and_a_display_prefix(operator):
    token, secret = make_token(operator)

    stored = ApiToken.objects.values().get(pk=token.pk)
    assert secret.startswith("bb_") and len(secret) > 40
    assert stored["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(stored.values())
    assert secret.startswith(stored["prefix"]) and len(stored["prefix"]) < 15


def test_it_shows_a_new_token_once_on_the_tokens_page(operator_client):
    made = operator_client.post("/api-tokens/", {"name": "ci-deploy", "scopes": ["read", "cancel"], "expires_days": 30})

    assert made.status_code == 200
    secret = made.context["secret"]
    assert secret in made.content.decode() and "no-store" in made["Cache-Control"]
    token = ApiToken.objects.get()
    assert token.scope_list == ["read", "cancel"] and token.name == "ci-deploy"
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    later = operator_client.get("/api-tokens/")
    assert secret not in later.content.decode() and token.prefix in later.content.decode()
    assert TokenClient(secret).get("/api/v1/batches").status_code == 200


def test_it_refuses_a_token_longer_than_a_year_or_without_scopes(operator_client):
    assert (
        operator_client.post("/api-tokens/", {"name": "x", "scopes": ["read"], "expires_days": 400}).status_code == 400
    )
    assert operator_client.post("/api-tokens/", {"name": "x", "expires_days": 30}).status_code == 400
    assert not ApiToken.objects.exists()


def test_it_refuses_an_expired_token(operator):
    _token, secret = make_token(operator, days=1)

    with time_machine.travel(timezone.now() + timedelta(days=1, seconds=1)):
        error = error_of(TokenClient(secret).get("/api/v1/batches"), 401)

    assert error["code"] == "invalid_token"


def test_it_refuses_a_token_once_revoked_on_the_page(operator_client, operator):
    token, secret = make_token(operator)
    assert TokenClient(secret).get("/api/v1/batches").status_code == 200

    response = operator_client.post(f"/api-tokens/{token.pk}/revoke/")

    assert response.status_code == 302
    assert error_of(TokenClient(secret).get("/api/v1/batches"), 401)["code"] == "invalid_token"
    assert "revoked" in operator_client.get("/api-tokens/").content.decode()


def test_it_lets_nobody_revoke_another_users_token(operator, viewer_client):
    token, secret = make_token(operator)

    assert viewer_client.post(f"/api-tokens/{token.pk}/revoke/").status_code == 404
    assert TokenClient(secret).get("/api/v1/batches").status_code == 200


def test_it_refuses_a_token_of_an_inactive_user(operator):
    _token, secret = make_token(operator)
    operator.is_active = False
    operator.save()

    error_of(TokenClient(secret).get("/api/v1/batches"), 401)


def test_it_refuses_a_made_up_token_and_no_token(client):
    assert error_of(TokenClient("bb_made-up").get("/api/v1/batches"), 401)["code"] == "invalid_token"
    anonymous = client.get("/api/v1/batches")
    assert error_of(anonymous, 401)["code"] == "unauthenticated"
    assert anonymous["WWW-Authenticate"].startswith("Bearer")


def test_it_notes_the_last_use_at_most_once_a_minute(operator):
    token, secret = make_token(operator)
    client = TokenClient(secret)
    start = timezone.now()

    with time_machine.travel(start, tick=False):
        client.get("/api/v1/batches")
    token.refresh_from_db()
    assert token.last_used_at == start
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        client.get("/api/v1/batches")
    token.refresh_from_db()
    assert token.last_used_at == start
    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        client.get("/api/v1/batches")
    token.refresh_from_db()
    assert token.last_used_at == start + timedelta(seconds=61)


def test_it_limits_each_token_per_minute_with_retry_after(operator, settings):
    settings.BATCHBOARD_API_TOKEN_PER_MINUTE = 2
    _token, secret = make_token(operator)
    _other, other_secret = make_token(operator, name="other")
    client = TokenClient(secret)

    assert [client.get("/api/v1/batches").status_code for _ in range(2)] == [200, 200]
    refused = client.get("/api/v1/batches")

    assert error_of(refused, 429)["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert TokenClient(other_secret).get("/api/v1/batches").status_code == 200  # each token counts its own


def test_it_holds_a_token_to_its_scopes(operator):
    record_batch(completed("batch_done1"))
    _token, secret = make_token(operator, "read")
    client = TokenClient(secret)

    assert client.get("/api/v1/batches/batch_done1").status_code == 200
    assert error_of(client.post("/api/v1/batches/batch_done1/cancel"), 403)["code"] == "insufficient_scope"
    bulk = client.post("/api/v1/batches/cancel", {"batch_ids": ["batch_done1"]}, content_type="application/json")
    assert error_of(bulk, 403)["code"] == "insufficient_scope"
    assert error_of(client.post("/api/v1/batches", {}), 403)["code"] == "insufficient_scope"
    _token, cancel_only = make_token(operator, "cancel", name="cancel-only")
    assert error_of(TokenClient(cancel_only).get("/api/v1/batches"), 403)["code"] == "insufficient_scope"


def test_it_holds_a_token_to_what_its_users_teams_allow(viewer):
    record_batch(completed("batch_done1"))
    _token, secret = make_token(viewer)  # every scope, but the viewer may not cancel or create

    client = TokenClient(secret)

    assert error_of(client.post("/api/v1/batches/batch_done1/cancel"), 403)["code"] == "forbidden"
    assert error_of(client.post("/api/v1/batches", {}), 403)["code"] == "forbidden"


def test_it_audits_a_write_with_the_tokens_name(operator):
    record_batch(completed("batch_done1"))
    _token, secret = make_token(operator, name="ci-deploy")

    TokenClient(secret).post("/api/v1/batches/batch_done1/cancel")

    event = AuditEvent.objects.get(action=Action.CANCEL)
    assert event.username == "operator (token: ci-deploy)" and event.user == operator
    assert event.batch_id == "batch_done1"


def test_it_never_opens_an_html_page_with_a_token(operator):
    _token, secret = make_token(operator)
    client = TokenClient(secret)

    for path in ("/batches/", "/api-tokens/", "/api/v1/docs", "/api/v1/openapi.json"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), path


def test_it_refuses_a_session_without_its_csrf_token(operator):
    record_batch(completed("batch_done1"))
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.get("/api/v1/batches").status_code == 200  # reading needs no CSRF token
    refused = client.post("/api/v1/batches/batch_done1/cancel")
    assert error_of(refused, 403)["message"].startswith("CSRF")
    assert not AuditEvent.objects.filter(action=Action.CANCEL).exists()

    client.get("/api-tokens/")  # a page sets the CSRF cookie, as a browser's would
    csrf = client.cookies["csrftoken"].value
    allowed = client.post("/api/v1/batches/batch_done1/cancel", headers={"X-CSRFToken": csrf})
    assert error_of(allowed, 409)["code"] == "not_cancelled"  # past the CSRF check: the batch has finished


def test_the_command_prints_a_working_token(operator, capsys):
    call_command("create_api_token", "--user", "operator", "--scopes", "read,cancel", "--name", "nightly")

    secret = capsys.readouterr().out.strip()
    token = ApiToken.objects.get()
    assert token.scope_list == ["read", "cancel"] and token.name == "nightly"
    assert TokenClient(secret).get("/api/v1/batches").status_code == 200


@pytest.mark.parametrize(
    "arguments",
    [
        ["--user", "nobody", "--scopes", "read", "--name", "x"],
        ["--user", "operator", "--scopes", "read,admin", "--name", "x"],
        ["--user", "operator", "--scopes", "read", "--name", "x", "--expires-days", "366"],
    ],
)
def test_the_command_refuses_bad_arguments(operator, arguments):
    with pytest.raises(CommandError):
        call_command("create_api_token", *arguments)
    assert not ApiToken.objects.exists()
