"""Login throttling with django-axes: a (username, IP) pair is locked out after DJANGO_LOGIN_FAILURE_LIMIT failures
for the cool-off, on both login views; never by username alone; the proxy's address only behind a proxy; failed
logins are logged; lockouts are in the admin and the audit log."""

import logging

import pytest
from axes.models import AccessAttempt

from audit.models import Action, AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.AXES_FAILURE_LIMIT = 3


def _login(client, password, path="/accounts/login/", username="viewer", **extra):
    return client.post(path, {"username": username, "password": password}, **extra)


def test_it_locks_out_the_pair_after_the_limit_even_with_the_right_password(client, viewer):
    for _ in range(3):
        assert _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1").status_code in (200, 429)
    response = _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.1")
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_it_counts_failures_on_the_admin_login_too(client, viewer):
    _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1")
    _login(client, "wrong-password", "/admin/login/", REMOTE_ADDR="10.0.0.1")
    _login(client, "wrong-password", "/admin/login/", REMOTE_ADDR="10.0.0.1")
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.1").status_code == 429
    assert _login(client, "pw-viewer", "/admin/login/", REMOTE_ADDR="10.0.0.1").status_code == 429


def test_nobody_can_lock_a_colleague_out_from_another_address(client, viewer):
    for _ in range(5):
        _login(client, "wrong-password", REMOTE_ADDR="10.6.6.6")
    response = _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.2")
    assert response.status_code == 302  # logged in: the lockout is for (viewer, 10.6.6.6) only


def test_one_address_locked_for_one_name_can_still_log_in_as_another(client, viewer, operator):
    for _ in range(3):
        _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1")
    assert _login(client, "pw-operator", username="operator", REMOTE_ADDR="10.0.0.1").status_code == 302


def test_it_lets_the_pair_in_again_after_the_cool_off(client, viewer):
    for _ in range(3):
        _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1")
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.1").status_code == 429
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time.replace(year=2000))
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.1").status_code == 302


def test_it_ignores_x_forwarded_for_unless_behind_a_proxy(client, viewer, settings):
    # Without a proxy the header is the client's own word: rotating it must not reset the count.
    for number in range(3):
        _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=f"192.0.2.{number}")
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.99").status_code == 429


def test_behind_a_proxy_it_uses_the_address_the_proxy_added(client, viewer, settings):
    settings.BEHIND_HTTPS_PROXY = True
    for _ in range(3):
        # The first entry is whatever the client sent; the last is the one the proxy appended.
        _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="1.1.1.1, 203.0.113.7")
    assert AccessAttempt.objects.get().ip_address == "203.0.113.7"
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 302


def test_it_logs_failed_logins_and_the_lockout_without_the_password(client, viewer, caplog):
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            _login(client, "wrong-password-123", REMOTE_ADDR="10.0.0.1")
    failures = [r for r in caplog.records if r.name == "audit" and "login_failed" in r.getMessage()]
    assert len(failures) == 3 and "viewer" in failures[0].getMessage() and "10.0.0.1" in failures[0].getMessage()
    assert any(r.name == "audit" and "lockout" in r.getMessage() for r in caplog.records)
    assert "wrong-password-123" not in caplog.text
    assert AuditEvent.objects.filter(action=Action.LOCKOUT, username="viewer", ip="10.0.0.1").exists()


def test_the_admin_shows_lockouts(client, viewer, admin_client):
    for _ in range(3):
        _login(client, "wrong-password", REMOTE_ADDR="10.0.0.1")
    page = admin_client.get("/admin/axes/accessattempt/")
    assert page.status_code == 200
    assert "viewer" in page.content.decode() and "10.0.0.1" in page.content.decode()
