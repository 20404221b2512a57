"""Settings come from the environment; a malformed value stops startup with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
    ],
)
def test_it_refuses_a_malformed_value_and_names_the_variable(variable, value):
    env = {variable: value}
    if variable == "OPENAI_BASE_URL":
        env["OPENAI_API_KEY"] = "sk-test-not-a-real-key"
    result = _check(**env)
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk-test-not-a-real-key" not in result.stderr + result.stdout


def test_it_starts_with_no_configuration_at_all():
    result = _check()
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


def test_it_starts_with_a_valid_price_file(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-model"]\ninput = 1\noutput = 2.5\n')
    result = _check(BATCHBOARD_PRICES=str(prices))
    assert result.returncode == 0, result.stderr
