"""Sessions end after an idle time and an absolute lifetime; logged-in pages are never cached; passwords have at
least 12 characters; only login, logout and password change are served under /accounts/."""

import time

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from batches import middleware
from batches.models import record_batch
from tests.conftest import completed

pytestmark = pytest.mark.django_db


def _age_session(client, *, idle: int = 0, since_login: int = 0):
    session = client.session
    now = int(time.time())
    session[middleware.SESSION_SEEN_KEY] = now - idle
    session[middleware.SESSION_STARTED_KEY] = now - since_login
    session.save()


def test_it_keeps_a_session_that_is_used(viewer_client, settings):
    _age_session(viewer_client, idle=settings.SESSION_IDLE_SECONDS - 60, since_login=3600)
    assert viewer_client.get("/batches/").status_code == 200


def test_it_ends_a_session_idle_for_too_long(viewer_client, settings):
    _age_session(viewer_client, idle=settings.SESSION_IDLE_SECONDS + 1)
    response = viewer_client.get("/batches/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert viewer_client.get("/batches/").status_code == 302  # logged out for good, not only for one request


def test_it_ends_a_busy_session_at_its_absolute_lifetime(viewer_client, settings):
    _age_session(viewer_client, idle=5, since_login=settings.SESSION_MAX_SECONDS + 1)
    response = viewer_client.get("/batches/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_defaults_are_eight_hours_idle_and_seven_days_in_all(settings):
    assert settings.SESSION_IDLE_SECONDS == 8 * 3600
    assert settings.SESSION_MAX_SECONDS == settings.SESSION_COOKIE_AGE == 7 * 86400


def test_it_writes_the_last_activity_at_most_once_a_minute(viewer_client):
    _age_session(viewer_client, idle=10)
    before = viewer_client.session[middleware.SESSION_SEEN_KEY]
    viewer_client.get("/batches/")
    assert viewer_client.session[middleware.SESSION_SEEN_KEY] == before
    _age_session(viewer_client, idle=middleware.ACTIVITY_WRITE_SECONDS + 1)
    viewer_client.get("/batches/")
    assert viewer_client.session[middleware.SESSION_SEEN_KEY] >= int(time.time()) - 5


def test_background_polling_does_not_keep_a_session_alive(viewer_client, settings):
    _age_session(viewer_client, idle=settings.SESSION_IDLE_SECONDS - 120)
    last_activity = viewer_client.session[middleware.SESSION_SEEN_KEY]
    for _ in range(3):
        assert viewer_client.get("/batches/", headers={"HX-Request": "true"}).status_code in (200, 286)
    assert viewer_client.session[middleware.SESSION_SEEN_KEY] == last_activity


def test_it_never_lets_a_logged_in_page_or_fragment_be_cached(viewer_client, fake_api):
    record_batch(completed("batch_nocache"))
    for url, headers in [
        ("/batches/", {}),
        ("/batches/", {"HX-Request": "true"}),
        ("/batches/batch_nocache/", {}),
        ("/batches/batch_nocache/", {"HX-Request": "true"}),
        ("/batches/new/", {}),  # a 403 for this user: still not stored
        ("/admin/", {}),
    ]:
        response = viewer_client.get(url, headers=headers)
        assert "no-store" in response.get("Cache-Control", ""), (url, headers)
        assert "private" in response["Cache-Control"], (url, headers)


def test_it_requires_passwords_of_twelve_characters():
    with pytest.raises(ValidationError, match="at least 12 characters"):
        validate_password("Zq8#vLm2!pX")  # 11
    validate_password("Zq8#vLm2!pXw")  # 12


@pytest.mark.parametrize(
    "url", ["/accounts/password_reset/", "/accounts/reset/MQ/set-password/", "/accounts/password_reset/done/"]
)
def test_it_does_not_serve_password_reset(client, viewer, url):
    client.force_login(viewer)
    assert client.get(url).status_code == 404
    assert client.post(url, {"email": "x@example.com"}).status_code == 404


def test_it_serves_login_logout_and_password_change(client, viewer):
    assert client.get("/accounts/login/").status_code == 200
    client.force_login(viewer)
    assert client.get("/accounts/password_change/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
