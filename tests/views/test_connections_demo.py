"""The demo of connections.example.toml (`BATCHBOARD_CONNECTIONS=connections.example.toml make run`): its two sandbox
organisations, a user per team, and each user seeing only their organisation's batches."""

import io
import re
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from batches import configured_connections, connection_file, services, sync
from batches.models import Connection

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "connections.example.toml"


def _makefile_defaults() -> dict[str, str]:
    """The key variables `make run` sets for a connections file: `run: export NAME ?= value`."""
    return dict(re.findall(r"^run: export (\w+) \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE))


@pytest.mark.once  # a file read against the Makefile's text: no database involved
def test_the_example_is_valid_with_the_keys_make_run_provides():
    specs = connection_file.load(EXAMPLE, _makefile_defaults())

    assert [(spec.slug, spec.kind) for spec in specs] == [("research", "openai"), ("finance", "azure")]
    assert _makefile_defaults() == {"SANDBOX_RESEARCH_KEY": "sk-sandbox", "SANDBOX_FINANCE_KEY": "sk-sandbox-second"}
    assert [spec.view_teams for spec in specs] == [("research",), ("finance",)]


@pytest.mark.once  # what make would run, not how: no database involved
def test_make_run_without_the_file_runs_what_it_ran_before():
    def planned(**env):
        result = subprocess.run(
            ["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}
        )
        return [line for line in result.stdout.splitlines() if "manage.py" in line]

    assert [line.split("manage.py ")[1].split()[0] for line in planned()] == [
        "ensure_secret_key",
        "migrate",
        "ensure_admin",
        "collectstatic",
        "serve",
    ]
    assert any("manage.py ensure_team_users" in line for line in planned(BATCHBOARD_CONNECTIONS=str(EXAMPLE)))


@pytest.fixture
def example(settings, tmp_path, monkeypatch, sandbox_url):
    """The example file with its URLs on this test's live server, and the variables `make run` would set."""
    for name, value in _makefile_defaults().items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "connections.toml"
    path.write_text(EXAMPLE.read_text().replace("http://127.0.0.1:8000", sandbox_url.removesuffix("/sandbox/v1")))
    settings.BATCHBOARD_CONNECTIONS = str(path)
    applied = configured_connections.forget_applied()
    yield path
    configured_connections.restore_applied(applied)  # the database is flushed back to what it was


def test_it_makes_a_user_per_team_once_with_a_printed_password(example):
    out = io.StringIO()
    call_command("ensure_team_users", stdout=out)
    again = io.StringIO()
    call_command("ensure_team_users", stdout=again)

    passwords = dict(re.findall(r"username: (\w+)\s+password: (\S+)", out.getvalue()))
    users = get_user_model().objects
    assert set(passwords) == {"research", "finance"}
    assert users.get(username="research").check_password(passwords["research"])
    assert list(users.get(username="finance").groups.values_list("name", flat=True)) == ["finance"]
    assert "exist already" in again.getvalue() and "password:" not in again.getvalue()


def test_it_makes_no_users_for_a_file_with_a_real_upstream(example):
    text = re.sub(r'base_url = "[^"]+/sandbox/v1"', 'base_url = "https://api.openai.com/v1"', example.read_text())
    example.write_text(text)
    out = io.StringIO()

    call_command("ensure_team_users", stdout=out)

    assert "no demo users made" in out.getvalue()
    assert not get_user_model().objects.exists()


def _create_batch(connection: Connection) -> str:
    """A one-line batch created in the connection's organisation over HTTP, as any client would."""
    client = services.get_client(connection=connection)
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "hi"}}\n'
    upload = client.upload_fileobj(io.BytesIO(line), filename="input.jsonl")
    return client.create_batch(input_file_id=upload.id, endpoint="/v1/embeddings").id


def test_two_users_in_two_teams_each_see_only_their_organisation(example, client):
    call_command("ensure_team_users", stdout=io.StringIO())
    research, finance = Connection.objects.get(slug="research"), Connection.objects.get(slug="finance")
    expected = {"research": {_create_batch(research), _create_batch(research)}, "finance": {_create_batch(finance)}}
    for connection in (research, finance):
        assert not sync.run_pass(force=True, connection=connection).error

    seen = {}
    for username in ("research", "finance"):
        client.force_login(get_user_model().objects.get(username=username))
        page = client.get(reverse("batches:list")).content.decode()
        seen[username] = set(re.findall(r"/batches/(batch_\w+)/", page))

    assert seen == expected
