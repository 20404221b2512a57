"""Single sign-on's settings: a configuration that cannot work stops startup with a message naming the variable, and
never shows the client secret."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Settings read from the environment by new processes: a second database changes nothing.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[2]
SECRET = "client-secret-not-to-be-shown"


def _check(**env):
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_", "BATCHBOARD_"))
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BATCHBOARD_LOCAL_LOGIN": "false"}, "BATCHBOARD_LOCAL_LOGIN"),
        ({"BATCHBOARD_OIDC_CLIENT_ID": "batchboard"}, "BATCHBOARD_OIDC_ISSUER"),
        ({"BATCHBOARD_OIDC_CLIENT_ID": "b", "BATCHBOARD_OIDC_ISSUER": "sso.example.com"}, "BATCHBOARD_OIDC_ISSUER"),
        (
            {"BATCHBOARD_OIDC_CLIENT_ID": "b", "BATCHBOARD_OIDC_ISSUER": "https://s", "BATCHBOARD_OIDC_SCOPES": "x"},
            "BATCHBOARD_OIDC_SCOPES",
        ),
    ],
)
def test_it_refuses_a_single_sign_on_that_cannot_work(env, named):
    result = _check(BATCHBOARD_OIDC_CLIENT_SECRET=SECRET, **env)
    assert result.returncode != 0
    assert named in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_explicit_endpoints_need_no_issuer():
    endpoints = {
        f"BATCHBOARD_OIDC_{name}": f"https://sso.example.com/{name.lower()}"
        for name in ("AUTHORIZATION_ENDPOINT", "TOKEN_ENDPOINT", "USERINFO_ENDPOINT", "JWKS_URI")
    }
    result = _check(BATCHBOARD_OIDC_CLIENT_ID="batchboard", BATCHBOARD_LOCAL_LOGIN="false", **endpoints)
    assert result.returncode == 0, result.stderr


def _form_action(**env) -> str:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_", "BATCHBOARD_"))
    }
    environment.update(env, DJANGO_SETTINGS_MODULE="dashboard.settings")
    code = "from django.conf import settings; print(settings.SECURE_CSP['form-action'])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_logout_at_the_provider_lets_the_logout_form_redirect_there_and_nowhere_else():
    sso = {"BATCHBOARD_OIDC_CLIENT_ID": "batchboard", "BATCHBOARD_OIDC_ISSUER": "https://sso.example.com/realms/x"}
    assert "sso.example.com" not in _form_action(**sso)
    allowed = _form_action(**sso, BATCHBOARD_OIDC_PROVIDER_LOGOUT="true")
    assert "'https://sso.example.com'" in allowed and "realms" not in allowed
