"""The README's production section, run as a script: its commands, as written, against a new PostgreSQL database.

Each command line of the section's shell block runs unchanged except for the port gunicorn binds (a free one instead
of 8000). The variables its `export` lines name are given test values: the same names, so a variable added to the
README must be added here too.
"""

import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from tests.conftest import free_port, process_environment, wait_until_serving

pytestmark = pytest.mark.postgresql

README = Path(settings.BASE_DIR) / "README.md"
SECTION = "## Running it in production"
SERVERS = ("gunicorn", "--loop", "db_worker")  # commands that keep running: started in the background


def readme_commands() -> tuple[list[str], list[str]]:
    """(the variables exported, the command lines) of the first shell block in the production section."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    exported, commands = [], []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("export "):
            exported += [assignment.split("=", 1)[0] for assignment in shlex.split(line)[1:]]
        elif line:
            commands.append(line)
    return exported, commands


@pytest.fixture
def new_database(transactional_db):
    """An empty PostgreSQL database beside the test database, as a fresh installation has; dropped afterwards."""
    name = f"readme_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    config = connection.settings_dict
    yield (
        f"postgres://{config['USER']}:{config['PASSWORD']}@{config['HOST'] or 'localhost'}:{config['PORT'] or 5432}/"
        f"{name}"
    )
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_readme_production_commands_serve_the_dashboard(new_database, redis_url, processes, tmp_path):
    exported, commands = readme_commands()
    port = free_port()
    test_values = {
        "DJANGO_SECRET_KEY": "a-long-random-secret-key-for-the-readme-test-0123456789abcdef",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_HTTPS": "true",  # the test plays the TLS-terminating proxy: it sends X-Forwarded-Proto
        "DJANGO_BEHIND_HTTPS_PROXY": "true",
        "DATABASE_URL": new_database,
        "OPENAI_API_KEY": "",  # the sandbox, served by this very gunicorn, is the upstream
        "REDIS_URL": redis_url,
    }
    assert sorted(exported) == sorted(test_values)
    environment = process_environment(
        new_database,
        **test_values,
        SANDBOX_URL=f"http://127.0.0.1:{port}/sandbox/v1",
        SANDBOX_FILES_DIR=str(tmp_path / "sandbox-files"),
        DJANGO_STATIC_ROOT=str(tmp_path / "static"),
        DJANGO_SUPERUSER_PASSWORD="readme-admin-password",
    )
    assert [command.split()[2] if "manage.py" in command else "gunicorn" for command in commands] == [
        "check",
        "migrate",
        "collectstatic",
        "gunicorn",
        "sync_batches",
        "db_worker",
    ]

    for number, command in enumerate(commands):
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if any(server in command for server in SERVERS):
            processes.start(f"readme-{number}", ["bash", "-c", f"exec {command}"], environment)
        else:
            done = subprocess.run(
                ["bash", "-c", command], env=environment, cwd=settings.BASE_DIR, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if "check --deploy" in command:
                assert "no issues" in done.stdout, done.stdout + done.stderr
    base_url = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{base_url}/healthz")
    manage = [".venv/bin/python", "manage.py", "createsuperuser", "--no-input", "--username", "admin", "--email", ""]
    subprocess.run(manage, env=environment, cwd=settings.BASE_DIR, check=True, capture_output=True)

    # What the proxy in front adds; its cookies are Secure, so they are sent by hand over this plain connection.
    proxy = {"X-Forwarded-Proto": "https"}
    origin = f"https://127.0.0.1:{port}"
    login_page = requests.get(f"{base_url}/accounts/login/", headers=proxy, timeout=30)
    stylesheet = re.search(r'href="(/static/css/base\.[0-9a-f]+\.css)"', login_page.text)
    csrf = login_page.cookies["csrftoken"]
    logged_in = requests.post(
        f"{base_url}/accounts/login/?next=/batches/",
        data={"username": "admin", "password": "readme-admin-password", "csrfmiddlewaretoken": csrf},
        headers={**proxy, "Cookie": f"csrftoken={csrf}", "Origin": origin, "Referer": f"{origin}/accounts/login/"},
        timeout=30,
        allow_redirects=False,
    )
    page = requests.get(
        f"{base_url}/batches/", headers={**proxy, "Cookie": f"sessionid={logged_in.cookies['sessionid']}"}, timeout=30
    )

    assert login_page.status_code == 200
    assert stylesheet, "pages link the hashed files collectstatic wrote"
    assert requests.get(base_url + stylesheet.group(1), headers=proxy, timeout=30).status_code == 200
    assert logged_in.status_code == 302 and logged_in.headers["Location"] == "/batches/"
    assert page.status_code == 200 and "Batches" in page.text
    assert requests.get(f"{base_url}/batches/", timeout=30, allow_redirects=False).status_code == 301  # to https
    ready = _poll(f"{base_url}/readyz", lambda response: response.status_code == 200)
    assert ready.text == "ready\n"  # the sync loop ran its first pass against the new database


def _poll(url, done, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(url, timeout=30)
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.5)
