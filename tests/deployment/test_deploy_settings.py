"""DJANGO_HTTPS turns on everything a deploy behind HTTPS needs, so `check --deploy` with the README's production
environment is clean; sandbox mode refuses to start on a public host unless SANDBOX_ENABLED=true says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Settings read from the environment by new processes: a second database changes nothing.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {  # the README's production environment
    "DJANGO_SECRET_KEY": "t3st-0nly-" + "kq9Zx1Lw7Rm4Vb8Np2Hs6Jd5Fg3Cy0Ta" * 2,
    "DJANGO_ALLOWED_HOSTS": "batchboard.example.com",
    "DJANGO_HTTPS": "true",
    "DJANGO_BEHIND_HTTPS_PROXY": "true",
    "DATABASE_URL": "postgres://batchboard@db/batchboard",
    "OPENAI_API_KEY": "sk-test-not-a-real-key",
}
SHOWN = [
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SANDBOX_ENABLED",
]


def _run(*args, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment.pop("DATABASE_URL", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def _settings(**env) -> dict:
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{name: getattr(settings, name, None) for name in {SHOWN!r}}}))"
    )
    result = _run("-c", code, DJANGO_SETTINGS_MODULE="dashboard.settings", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_deploy_is_clean_with_the_production_environment():
    result = _run("manage.py", "check", "--deploy", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    assert "WARNINGS" not in result.stderr + result.stdout


def test_without_the_switch_check_deploy_still_warns():
    result = _run("manage.py", "check", "--deploy", **{**PRODUCTION, "DJANGO_HTTPS": "false"})
    assert "security.W004" in result.stderr and "security.W008" in result.stderr


def test_the_switch_turns_on_secure_cookies_hsts_redirect_and_the_proxy_header():
    values = _settings(**PRODUCTION)
    assert values == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 365 * 86400,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SANDBOX_ENABLED": False,
    }
    values = _settings(**PRODUCTION, DJANGO_HSTS_SECONDS="600", DJANGO_SSL_REDIRECT="false")
    assert (values["SECURE_HSTS_SECONDS"], values["SECURE_SSL_REDIRECT"]) == (600, False)
    # The proxy redirects http itself: that is a decision, not a warning.
    result = _run("manage.py", "check", "--deploy", **PRODUCTION, DJANGO_SSL_REDIRECT="false")
    assert result.returncode == 0 and "W008" not in result.stderr


@pytest.mark.parametrize(("variable", "value"), [("DJANGO_HSTS_SECONDS", "a year"), ("DJANGO_HSTS_SECONDS", "-1")])
def test_it_refuses_a_malformed_hsts_duration(variable, value):
    result = _run("manage.py", "check", **{**PRODUCTION, variable: value})
    assert result.returncode != 0 and variable in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("hosts", ["batchboard.example.com", "127.0.0.1,batchboard.example.com", "*", "10.0.0.5"])
def test_sandbox_mode_refuses_to_start_on_a_public_host(hosts):
    result = _run("manage.py", "check", DJANGO_ALLOWED_HOSTS=hosts)
    assert result.returncode != 0
    assert "OPENAI_API_KEY is not set" in result.stderr
    assert "SANDBOX_ENABLED=true" in result.stderr
    assert "Traceback" not in result.stderr


def test_sandbox_mode_starts_on_a_public_host_when_asked_explicitly():
    result = _run("manage.py", "check", DJANGO_ALLOWED_HOSTS="batchboard.example.com", SANDBOX_ENABLED="true")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("hosts", ["127.0.0.1,localhost", "localhost,[::1]", "app.localhost", "127.0.0.2"])
def test_sandbox_mode_starts_locally_without_asking(hosts):
    result = _run("manage.py", "check", DJANGO_ALLOWED_HOSTS=hosts)
    assert result.returncode == 0, result.stderr
    assert _settings(DJANGO_ALLOWED_HOSTS=hosts)["SANDBOX_ENABLED"] is True
