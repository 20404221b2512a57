"""Settings come from the environment; a malformed value stops startup with a message naming the variable."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Settings read from the environment by new processes: a second database changes nothing.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[2]


def _check(**env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
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
    ("variable", "value"),
    [
        ("SANDBOX_SPEED", "fast"),
        ("SANDBOX_SPEED", "0"),
        ("SANDBOX_ERROR_RATE", "2"),
        ("SANDBOX_STORAGE_QUOTA_MB", "lots"),
        ("SANDBOX_FILE_MAX_AGE_DAYS", "0"),
        ("DJANGO_DEBUG", "maybe"),
        ("OPENAI_BASE_URL", "api.openai.com/v1"),
        ("OPENAI_TIMEOUT", "-1"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("DJANGO_ALLOWED_HOSTS", " , "),
        ("BATCHBOARD_PRICES", "/nonexistent/prices.toml"),
        ("TIKTOKEN_CACHE_DIR", "/nonexistent/tiktoken"),
        ("REDIS_URL", "localhost:6379"),
        ("BATCHBOARD_LOG_FORMAT", "xml"),
        ("SANDBOX_DROP_RATE", "2"),
        ("BATCHBOARD_ARCHIVE", "sometimes"),
        ("BATCHBOARD_ARCHIVE_MAX_GB", "lots"),
        ("BATCHBOARD_RESULTS_STORAGE_OPTIONS", "[1]"),
        ("BATCHBOARD_PUBLIC_LINKS", "sometimes"),
    ],
)
def test_it_refuses_a_malformed_value_and_names_the_variable(variable, value):
    env = {variable: value}
    if variable == "OPENAI_BASE_URL":
        env["OPENAI_API_KEY"] = "sk-test-not-a-real-key"
    if variable == "BATCHBOARD_RESULTS_STORAGE_OPTIONS":
        env["BATCHBOARD_RESULTS_STORAGE"] = "storages.backends.s3.S3Storage"
    result = _check(**env)
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk-test-not-a-real-key" not in result.stderr + result.stdout


@pytest.mark.parametrize(("value", "read"), [("", "True"), ("false", "False"), ("off", "False"), ("yes", "True")])
def test_share_links_are_switched_by_batchboard_public_links(value, read):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment["BATCHBOARD_PUBLIC_LINKS"] = value
    command = "from django.conf import settings; print(settings.BATCHBOARD_PUBLIC_LINKS)"
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", command],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip().splitlines()[-1] == read, result.stderr


def test_it_starts_with_no_configuration_at_all():
    result = _check()
    assert result.returncode == 0, result.stderr


def test_it_has_no_issue_once_the_secret_key_is_set():
    result = _check(DJANGO_SECRET_KEY="a-long-random-production-secret-key-for-this-test-only-0123456789")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_it_refuses_a_price_file_with_a_bad_price_and_says_where(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-model"]\ninput = "cheap"\noutput = "1"\n')
    result = _check(BATCHBOARD_PRICES=str(prices))
    assert result.returncode != 0
    assert "BATCHBOARD_PRICES" in result.stderr
    assert "my-model" in result.stderr and "input" in result.stderr
    assert "Traceback" not in result.stderr


def test_finding_8_it_refuses_a_price_too_large_to_compute_with_at_startup(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-model"]\ninput = "1e999999999"\noutput = "1"\n')
    result = _check(BATCHBOARD_PRICES=str(prices))
    assert result.returncode != 0
    assert "BATCHBOARD_PRICES" in result.stderr and "my-model" in result.stderr and "at most 1,000,000" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_starts_with_a_valid_price_file(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-model"]\ninput = 1\noutput = 2.5\n')
    result = _check(BATCHBOARD_PRICES=str(prices))
    assert result.returncode == 0, result.stderr


def test_importing_the_settings_writes_nothing_to_disk(tmp_path):
    """Not the secret key, not the database's, static files' or sandbox's folders: `make run` creates those."""
    shutil.copytree(ROOT / "dashboard", tmp_path / "dashboard")
    before = sorted(tmp_path.rglob("*"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", "import dashboard.settings as s; print(s.SECRET_KEY_IS_TEMPORARY)"],
        cwd=tmp_path,
        # This copy's settings first; the apps they import (the price file's parser) from the checkout.
        env={**environment, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"  # No key anywhere: a temporary one, and a system check says so.
    assert sorted(tmp_path.rglob("*")) == before


def test_ensure_secret_key_writes_a_private_key_once_that_the_settings_then_read(tmp_path):
    shutil.copytree(ROOT / "dashboard", tmp_path / "dashboard")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    environment["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])  # this copy's settings, the real apps
    environment["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"

    def manage(*args):
        return subprocess.run(
            [sys.executable, "-m", "django", *args], cwd=tmp_path, env=environment, capture_output=True, text=True
        )

    first = manage("ensure_secret_key")
    key_file = tmp_path / "var" / "secret_key"
    key = key_file.read_text()
    second = manage("ensure_secret_key")
    check = manage("check")

    assert first.returncode == 0, first.stderr
    assert len(key) >= 50 and key_file.stat().st_mode & 0o777 == 0o600
    assert "configured already" in second.stdout and key_file.read_text() == key
    assert "batchboard.W001" not in check.stderr + check.stdout
    # The encryption key for stored connection keys and notification URLs, the same way.
    encryption_file = tmp_path / "var" / "encryption_key"
    assert encryption_file.stat().st_mode & 0o777 == 0o600
    assert "An encryption key is configured already." in second.stdout
    stored = manage("shell", "-c", "from batches import secrets; print(secrets.decrypt(secrets.encrypt('sk-x')))")
    assert stored.stdout.strip().splitlines()[-1] == "sk-x", stored.stderr
