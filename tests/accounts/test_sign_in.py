"""Single sign-on through Django's test client against a real OpenID provider (oidc-provider-mock over HTTP): users
matched by subject, groups from the claim, the refusals, `next` kept, and password logins turned off."""

import logging
import uuid
from urllib.parse import quote, urlsplit

import pytest
import requests
from django.contrib.auth.models import Group, User

from accounts import provider
from accounts.models import ManagedGroup, OidcIdentity
from audit.models import Action, AuditEvent

pytestmark = pytest.mark.django_db


def _subject() -> str:
    return f"sub-{uuid.uuid4().hex}"


def sign_in(client, provider, sub, next_url=""):
    """Through the whole code flow: batchboard's redirect to the provider, its authorization page answered for
    `sub`, and the callback with the code (which batchboard exchanges at the provider's token endpoint)."""
    start = client.get("/accounts/oidc/login/" + (f"?next={quote(next_url)}" if next_url else ""))
    assert start.status_code == 302 and start["Location"].startswith(provider.url), start
    answer = requests.post(start["Location"], data={"sub": sub}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    callback = urlsplit(answer.headers["Location"])
    assert callback.path == "/accounts/oidc/callback/"
    return client.get(f"{callback.path}?{callback.query}")


def test_it_makes_a_user_at_the_first_sign_in_and_finds_them_by_subject_after(client, sso):
    sub = sso.add_user(_subject(), preferred_username="ada", email="ada@example.com", groups=["ops"])
    response = sign_in(client, sso, sub)
    assert response.status_code == 302 and response["Location"] == "/batches/"
    user = User.objects.get(username="ada")
    assert int(client.session["_auth_user_id"]) == user.pk
    assert not user.has_usable_password() and not user.is_staff and not user.is_superuser
    assert OidcIdentity.objects.get(user=user).subject == sub

    # The provider's user changes e-mail and name; they are still the same user here.
    sso.add_user(sub, preferred_username="ada.l", email="ada.l@example.com", groups=["ops"])
    client.logout()
    sign_in(client, sso, sub)
    assert int(client.session["_auth_user_id"]) == user.pk
    user.refresh_from_db()
    assert user.username == "ada" and user.email == "ada.l@example.com"
    assert User.objects.count() == 1


def test_the_groups_claim_becomes_the_users_groups_and_leaves_local_groups_alone(client, sso):
    local = Group.objects.create(name="local-admins")
    sub = sso.add_user(_subject(), preferred_username="bo", groups=["ops", "research"])
    sign_in(client, sso, sub)
    user = User.objects.get(username="bo")
    user.groups.add(local)
    assert set(user.groups.values_list("name", flat=True)) == {"ops", "research", "local-admins"}
    assert set(ManagedGroup.objects.values_list("group__name", flat=True)) == {"ops", "research"}

    sso.add_user(sub, preferred_username="bo", groups=["research", "finance"])
    client.logout()
    sign_in(client, sso, sub)
    assert set(user.groups.values_list("name", flat=True)) == {"research", "finance", "local-admins"}
    assert Group.objects.filter(name="ops").exists()  # left, not deleted: other members keep it

    sso.add_user(sub, preferred_username="bo")  # no claim at all: no managed groups
    client.logout()
    sign_in(client, sso, sub)
    assert list(user.groups.values_list("name", flat=True)) == ["local-admins"]
    assert AuditEvent.objects.filter(action=Action.MEMBERSHIP).exists()


def test_hostile_group_values_are_left_out(client, sso):
    sub = sso.add_user(_subject(), preferred_username="cy", groups=["ops", 7, {"a": 1}, "x" * 400, "", "ops"])
    assert sign_in(client, sso, sub).status_code == 302
    assert list(User.objects.get(username="cy").groups.values_list("name", flat=True)) == ["ops"]


def test_a_taken_user_name_gets_a_free_one_and_never_the_existing_account(client, sso, django_user_model):
    existing = django_user_model.objects.create_user("dee", email="dee@example.com", password="pw-dee-local-1")
    first = sso.add_user(_subject(), preferred_username="Dee", email="dee@example.com")
    second = sso.add_user(_subject(), preferred_username="dee")
    sign_in(client, sso, first)
    assert int(client.session["_auth_user_id"]) != existing.pk
    client.logout()
    sign_in(client, sso, second)
    names = set(User.objects.exclude(pk=existing.pk).values_list("username", flat=True))
    assert names == {"Dee-2", "dee-3"}
    existing.refresh_from_db()
    assert existing.check_password("pw-dee-local-1") and not existing.oidc_identities.exists()


def test_a_user_in_none_of_the_required_groups_is_refused_with_no_session_and_no_user(client, sso, settings, caplog):
    settings.BATCHBOARD_OIDC_REQUIRED_GROUPS = ["batchboard-users", "batchboard-admins"]
    sub = sso.add_user(_subject(), preferred_username="eve", groups=["marketing"])
    with caplog.at_level(logging.INFO):
        response = sign_in(client, sso, sub)
    assert response.status_code == 403
    assert "not in a group that may use batchboard" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="eve").exists()
    refusal = AuditEvent.objects.get(action=Action.LOGIN_FAILED)
    assert "refused by single sign-on" in refusal.detail
    assert "client-secret-never-shown" not in caplog.text

    allowed = sso.add_user(_subject(), preferred_username="fay", groups=["marketing", "batchboard-users"])
    assert sign_in(client, sso, allowed).status_code == 302
    assert "_auth_user_id" in client.session


def test_an_inactive_user_is_refused_and_loses_the_session_they_had(client, sso):
    sub = sso.add_user(_subject(), preferred_username="gus")
    sign_in(client, sso, sub)
    assert client.get("/batches/time-zone/").status_code == 200
    User.objects.filter(username="gus").update(is_active=False)
    assert client.get("/batches/time-zone/").status_code == 302  # to the login page
    response = sign_in(client, sso, sub)
    assert response.status_code == 403 and "switched off" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_next_survives_the_round_trip_but_only_to_this_site(client, sso):
    sub = sso.add_user(_subject(), preferred_username="hal")
    assert sign_in(client, sso, sub, next_url="/batches/batch_abc/")["Location"] == "/batches/batch_abc/"
    client.logout()
    for elsewhere in ("https://evil.example/", "//evil.example/x", "http://evil.example/batches/"):
        assert sign_in(client, sso, sub, next_url=elsewhere)["Location"] == "/batches/"
        client.logout()


def test_the_login_page_offers_the_provider_with_next(client, sso):
    page = client.get("/accounts/login/?next=/batches/batch_abc/").content.decode()
    assert "Sign in with Example SSO" in page
    assert 'href="/accounts/oidc/login/?next=%2Fbatches%2Fbatch_abc%2F"' in page
    assert 'name="password"' in page  # local login stays on unless turned off


def test_without_sso_configured_nothing_changes(client, settings):
    assert settings.BATCHBOARD_OIDC_ENABLED is False
    assert "Sign in with" not in client.get("/accounts/login/").content.decode()
    assert client.get("/accounts/oidc/login/").status_code == 404
    assert client.get("/accounts/oidc/callback/?code=x&state=y").status_code == 404


def test_an_unreachable_provider_gets_a_page_not_an_error(client, sso, settings):
    settings.BATCHBOARD_OIDC_ISSUER = "http://127.0.0.1:9"
    response = client.get("/accounts/oidc/login/")
    assert response.status_code == 503 and "cannot be reached" in response.content.decode()


def test_a_forged_callback_is_refused(client, sso):
    sso.add_user(_subject(), preferred_username="ivy")
    client.get("/accounts/oidc/login/")
    assert client.get("/accounts/oidc/callback/?code=forged&state=forged").status_code == 400
    assert client.get("/accounts/oidc/callback/?error=access_denied").status_code == 403
    assert "_auth_user_id" not in client.session


# --- Password logins turned off (BATCHBOARD_LOCAL_LOGIN=false) ------------------------------------------------


@pytest.fixture
def sso_only(settings, sso):
    settings.BATCHBOARD_LOCAL_LOGIN = False
    settings.BATCHBOARD_BREAK_GLASS_USER = "rescue"
    return sso


def _post_login(client, username, password, path="/accounts/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR="10.0.0.9")


def test_local_login_off_hides_the_password_form_but_offers_sign_in(client, sso_only):
    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Example SSO" in page and 'name="password"' not in page


def test_local_login_off_refuses_a_password_posted_anyway(client, sso_only, viewer):
    response = _post_login(client, "viewer", "pw-viewer")
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    assert "Password login is turned off" in response.content.decode()
    assert _post_login(client, "viewer", "pw-viewer", "/admin/login/").status_code == 200
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action=Action.LOGIN_FAILED, username="viewer").count() == 2


def test_the_break_glass_superuser_still_logs_in_with_a_password(client, sso_only, django_user_model):
    django_user_model.objects.create_superuser("rescue", password="pw-rescue-long-1")
    assert 'name="password"' in client.get("/accounts/login/?local=1").content.decode()
    response = _post_login(client, "rescue", "pw-rescue-long-1")
    assert response.status_code == 302 and "_auth_user_id" in client.session


def test_the_break_glass_name_without_superuser_rights_is_refused(client, sso_only, django_user_model):
    django_user_model.objects.create_user("rescue", password="pw-rescue-long-1")
    assert _post_login(client, "rescue", "pw-rescue-long-1").status_code == 200
    assert "_auth_user_id" not in client.session


def test_the_break_glass_login_is_still_throttled(client, sso_only, settings, django_user_model):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_superuser("rescue", password="pw-rescue-long-1")
    for _ in range(3):
        _post_login(client, "rescue", "wrong")
    assert _post_login(client, "rescue", "pw-rescue-long-1").status_code == 429
    assert "_auth_user_id" not in client.session


def test_logout_ends_the_session_and_with_provider_logout_goes_on_to_the_provider(client, sso, settings):
    sub = sso.add_user(_subject(), preferred_username="kit")
    sign_in(client, sso, sub)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session

    settings.BATCHBOARD_OIDC_PROVIDER_LOGOUT = True
    sign_in(client, sso, sub)
    response = client.post("/accounts/logout/")
    assert "_auth_user_id" not in client.session
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{sso.url}/oauth2/end_session"
    assert "post_logout_redirect_uri=http%3A%2F%2Ftestserver%2Faccounts%2Flogin%2F" in location.query


def test_a_password_session_logs_out_here_only_even_with_provider_logout(client, settings, viewer):
    settings.BATCHBOARD_OIDC_PROVIDER_LOGOUT = True
    client.post("/accounts/login/", {"username": "viewer", "password": "pw-viewer"})
    assert client.post("/accounts/logout/")["Location"] == "/accounts/login/"


def test_endpoints_given_one_by_one_need_no_discovery(client, sso, settings):
    document = requests.get(f"{sso.url}/.well-known/openid-configuration", timeout=10).json()
    settings.BATCHBOARD_OIDC_ISSUER = ""
    settings.BATCHBOARD_OIDC_ENDPOINTS = {
        name: document[name] for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")
    }
    sub = sso.add_user(_subject(), preferred_username="lou")
    assert sign_in(client, sso, sub).status_code == 302
    assert OidcIdentity.objects.get(subject=sub).issuer == sso.url


def test_an_id_token_from_another_issuer_is_refused(client, sso, settings):
    document = requests.get(f"{sso.url}/.well-known/openid-configuration", timeout=10).json()
    settings.BATCHBOARD_OIDC_ENDPOINTS = {name: document[name] for name in provider.ENDPOINTS}
    # The endpoints answer, but their tokens are signed as another issuer than the one configured.
    settings.BATCHBOARD_OIDC_ISSUER = "https://sso.example.com"
    sub = sso.add_user(_subject(), preferred_username="max")
    response = sign_in(client, sso, sub)
    assert response.status_code == 403 and "could not be verified" in response.content.decode()
    assert "_auth_user_id" not in client.session and not User.objects.filter(username="max").exists()


def test_refused_sign_ins_do_not_lock_the_address_out_of_single_sign_on(client, sso, settings):
    # django-axes locks (user name, address) pairs; a callback names no user, so it must not lock "nobody" there.
    settings.AXES_FAILURE_LIMIT = 2
    settings.BATCHBOARD_OIDC_REQUIRED_GROUPS = ["batchboard-users"]
    refused = sso.add_user(_subject(), preferred_username="nia")
    for _ in range(3):
        assert sign_in(client, sso, refused).status_code == 403
    allowed = sso.add_user(_subject(), preferred_username="oz", groups=["batchboard-users"])
    assert sign_in(client, sso, allowed).status_code == 302
    assert AuditEvent.objects.filter(action=Action.LOGIN_FAILED).count() == 3  # still audited, and counted per address


def test_an_address_locked_by_password_guessing_is_refused_single_sign_on_too(client, sso, settings):
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 3
    for number in range(3):
        client.post("/accounts/login/", {"username": f"guess-{number}", "password": "x"})
    sub = sso.add_user(_subject(), preferred_username="pam")
    assert sign_in(client, sso, sub).status_code == 429
    assert "_auth_user_id" not in client.session
