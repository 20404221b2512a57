"""Login throttling with django-axes: a (username, IP) pair is locked out after DJANGO_LOGIN_FAILURE_LIMIT failures
for the cool-off, on both login views; never by username alone; the proxy's address only behind a proxy; failed
logins are logged; lockouts are in the admin and the audit log."""

import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

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


# --- Finding 10 (issue 18): password spraying, one guess at each of many user names, locks the address --------------


def _spray(client, count, address, path="/accounts/login/", first=0):
    for number in range(first, first + count):
        response = _login(client, f"guess-{number}", path, username=f"user-{number}", REMOTE_ADDR=address)
        assert response.status_code == 200  # each name fails once: never a pair lockout


def test_finding_10_51_usernames_from_one_address_lock_it_and_another_address_still_logs_in(client, viewer, settings):
    assert settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS == 50
    _spray(client, 50, "10.7.7.7")

    refused = _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7")  # the 51st name, and the right password
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.content.decode()
    assert "whatever the user names" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    assert _login(client, "pw-viewer", "/admin/login/", REMOTE_ADDR="10.7.7.7").status_code == 429

    assert _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.8").status_code == 302
    assert client.session["_auth_user_id"] == str(viewer.pk)


def test_finding_10_the_limit_is_a_setting_and_counts_the_admin_login_too(client, viewer, settings):
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 4
    _spray(client, 2, "10.7.7.7")
    _spray(client, 1, "10.7.7.7", path="/admin/login/", first=2)
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7").status_code == 302  # 3 failures: under the limit
    client.logout()
    _spray(client, 1, "10.7.7.7", first=3)

    assert _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7").status_code == 429


def test_finding_10_the_address_is_let_in_again_an_hour_after_its_failures(client, viewer, settings):
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 5
    _spray(client, 5, "10.7.7.7")
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7").status_code == 429

    failures = AuditEvent.objects.filter(action=Action.LOGIN_FAILED, ip="10.7.7.7")
    failures.update(at=timezone.now() - timedelta(minutes=61))
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7").status_code == 302


def test_finding_10_a_locked_address_is_audited_and_its_refusals_keep_it_locked(client, viewer, settings):
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 5
    _spray(client, 5, "10.7.7.7")
    _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7")

    refusal = AuditEvent.objects.filter(action=Action.LOGIN_FAILED, ip="10.7.7.7").latest("pk")
    assert (refusal.username, refusal.outcome) == ("viewer", "refused")
    assert "this IP is locked out" in refusal.detail and "whatever the username" in refusal.detail
    lockout = AuditEvent.objects.get(action=Action.LOCKOUT, ip="10.7.7.7")  # once, at the failure that locked it
    assert (lockout.username, lockout.detail) == ("user-4", "this IP, whatever the username")
    # The first five failures move out of the hour; the refusal itself is a failure still inside it.
    AuditEvent.objects.filter(pk__lt=refusal.pk).update(at=timezone.now() - timedelta(minutes=61))
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 1
    assert _login(client, "pw-viewer", REMOTE_ADDR="10.7.7.7").status_code == 429


def test_finding_10_the_count_is_one_bounded_query_however_long_an_address_keeps_trying(client, settings):
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 3
    AuditEvent.objects.bulk_create(
        AuditEvent(action=Action.LOGIN_FAILED, outcome="refused", ip="10.7.7.7", username=f"u{n}") for n in range(500)
    )
    with CaptureQueriesContext(connection) as queries:
        assert _login(client, "guess", REMOTE_ADDR="10.7.7.7").status_code == 429
    counts = [q["sql"] for q in queries.captured_queries if "audit_auditevent" in q["sql"] and "COUNT" in q["sql"]]
    assert len(counts) == 1 and "LIMIT 3" in counts[0]


@pytest.mark.parametrize("value", ["0", "fifty"])
def test_finding_10_a_malformed_limit_stops_startup_naming_the_variable(value):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment["BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS"] = value
    result = subprocess.run(
        [sys.executable, str(django_settings.BASE_DIR / "manage.py"), "check"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS must be a whole number between 1 and 1,000,000" in result.stderr


def _failed_login_over_http(base_url: str, number: int) -> int:
    with requests.Session() as browser:
        page = browser.get(f"{base_url}/accounts/login/", timeout=30)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
        form = {"csrfmiddlewaretoken": token, "username": f"parallel-{number}", "password": "guess"}
        return browser.post(f"{base_url}/accounts/login/", data=form, timeout=30).status_code


@pytest.mark.django_db(transaction=True)
def test_finding_10_parallel_failures_served_by_other_threads_are_all_counted(live_server, settings):
    settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = 12
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda n: _failed_login_over_http(live_server.url, n), range(12)))

    assert statuses == [200] * 12
    assert AuditEvent.objects.filter(action=Action.LOGIN_FAILED, ip="127.0.0.1").count() == 12
    assert _failed_login_over_http(live_server.url, 99) == 429
