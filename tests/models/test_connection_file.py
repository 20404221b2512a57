"""The connections file (BATCHBOARD_CONNECTIONS): what it accepts, and a refusal naming the file and the line for
everything it does not (a new process with a bad file does not start)."""

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from batches.connection_file import ConnectionFileError, ConnectionSpec, load, parse

# Pure functions of the text and the environment given, and settings read by a new process: no database changes them.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[2]
ENV = {"RESEARCH_KEY": "sk-research", "FINANCE_KEY": "sk-finance", "HOOK_SECRET": "whsec_c2VjcmV0"}

GOOD = """\
# Two organisations
[[connection]]
name = "Research"
slug = "research"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "RESEARCH_KEY"
organization = "org-research"
project = "proj_research"
budget_per_minute = 300
monthly_budget = 2500.50
archive = "on-open"
webhook_secret_env = "HOOK_SECRET"
teams = { view = ["research"], cancel = ["research-leads"], create = ["research-leads"] }

[[connection]]
name = "Finance"
slug = "finance"
kind = "azure"
base_url = "https://finance-east.openai.azure.com/openai/v1/"
api_key_env = "FINANCE_KEY"
paused = true

[connection.teams]
view = ["finance", "auditors"]
create = ["finance"]
"""


def refusal(text: str, environ=None) -> ConnectionFileError:
    with pytest.raises(ConnectionFileError) as caught:
        parse(text, "conf/connections.toml", ENV if environ is None else environ)
    return caught.value


def with_research(**changes) -> str:
    """The first table of GOOD alone, with values changed (None removes a key) or keys added."""
    lines = GOOD.split("\n\n")[0].splitlines()
    out = []
    for line in lines:
        key = line.split(" = ")[0]
        if key in changes:
            value = changes.pop(key)
            if value is not None:
                out.append(f"{key} = {value}")
        else:
            out.append(line)
    out += [f"{key} = {value}" for key, value in changes.items()]
    return "\n".join(out) + "\n"


def line_of(text: str, start: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def test_it_reads_every_field_of_both_tables_and_both_team_spellings():
    research, finance = parse(GOOD, "connections.toml", ENV)

    assert research == ConnectionSpec(
        name="Research",
        slug="research",
        kind="openai",
        base_url="https://api.openai.com/v1",
        api_key_env="RESEARCH_KEY",
        organization="org-research",
        project="proj_research",
        budget_per_minute=300,
        monthly_budget=Decimal("2500.50"),
        archive="on-open",
        paused=False,
        webhook_secret_env="HOOK_SECRET",
        view_teams=("research",),
        cancel_teams=("research-leads",),
        create_teams=("research-leads",),
        line=2,
    )
    assert (finance.kind, finance.paused, finance.line) == ("azure", True, 16)
    assert finance.view_teams == ("finance", "auditors") and finance.create_teams == ("finance",)
    assert finance.cancel_teams == () and finance.teams == ("finance", "auditors")


def test_it_names_the_file_and_the_line_of_a_toml_syntax_error():
    text = GOOD.replace('slug = "finance"', 'slug = "finance')
    error = refusal(text)

    assert error.line == line_of(text, 'slug = "finance')
    assert str(error).startswith(f"conf/connections.toml, line {error.line}: it is not valid TOML")


@pytest.mark.parametrize(
    ("change", "blamed", "says"),
    [
        ({"kind": '"anthropic"'}, "kind", "unknown kind 'anthropic': it must be one of openai, azure, compatible"),
        ({"colour": '"blue"'}, "colour", "unknown key 'colour'"),
        ({"api_key": '"sk-live-123"'}, "api_key", "a key is never written in the file"),
        ({"api_key_env": '"sk-live-123"'}, "api_key_env", "must be the NAME of the environment variable"),
        ({"api_key_env": '"UNSET_KEY"'}, "api_key_env", "names the environment variable UNSET_KEY, which is not set"),
        ({"webhook_secret_env": '"RESEARCH_KEY"'}, "webhook_secret_env", "must start with whsec_"),
        ({"base_url": '"api.openai.com/v1"'}, "base_url", "must be an http(s) URL"),
        ({"base_url": '"https://user:sk-x@api.openai.com/v1"'}, "base_url", "must not carry credentials"),
        ({"base_url": '"https://api.openai.com/v1?x=1"'}, "base_url", "no query string"),
        ({"slug": '"re search"'}, "slug", "must be letters, digits and hyphens"),
        ({"slug": '"default"'}, "slug", "the connection of the OPENAI_* settings"),
        ({"slug": "7"}, "slug", "slug must be a string in quotes"),
        ({"name": '""'}, "name", "name must not be empty"),
        ({"budget_per_minute": "0"}, "budget_per_minute", "whole number"),
        ({"budget_per_minute": "true"}, "budget_per_minute", "whole number"),
        ({"monthly_budget": "-5"}, "monthly_budget", "amount in dollars"),
        ({"monthly_budget": "1.001"}, "monthly_budget", "in cents at most"),
        ({"archive": '"sometimes"'}, "archive", "archive must be one of new, all, on-open, off"),
        ({"paused": '"yes"'}, "paused", "paused must be true or false"),
        ({"teams": '{ view = "research" }'}, "teams", "teams.view must be a list of group names"),
        ({"teams": '{ admin = ["research"] }'}, "teams", "unknown grant 'admin'"),
        ({"teams": '["research"]'}, "teams", "teams must be a table"),
    ],
)
def test_it_refuses_a_bad_value_on_its_own_line(change, blamed, says):
    text = with_research(**change)
    error = refusal(text)

    assert says in error.problem
    assert error.line == line_of(text, f"{blamed} = ")
    assert str(error).startswith(f"conf/connections.toml, line {error.line}: ")


def test_it_blames_the_header_of_a_table_missing_a_required_key():
    text = GOOD.replace('api_key_env = "FINANCE_KEY"\n', "")
    error = refusal(text)

    assert error.problem == "this [[connection]] has no api_key_env"
    assert error.line == 16


def test_it_refuses_a_duplicate_slug_naming_both_lines():
    text = GOOD.replace('slug = "finance"', 'slug = "Research"')
    error = refusal(text)

    assert error.line == line_of(text, 'slug = "Research"')
    assert "slug 'Research' is already used by the connection at line 2" in str(error)


def test_it_blames_the_line_of_a_bad_grant_in_a_teams_sub_table():
    text = GOOD.replace('create = ["finance"]', 'delete = ["finance"]')
    error = refusal(text)

    assert error.line == line_of(text, "delete = ")
    assert "unknown grant 'delete'" in error.problem


def test_it_never_echoes_a_secret_written_in_the_file():
    text = with_research(api_key_env='"sk-proj-very-secret"')

    assert "very-secret" not in str(refusal(text))


@pytest.mark.parametrize(
    ("kind", "url", "accepted"),
    [
        ("azure", "https://finance-east.openai.azure.com/openai/v1/", True),
        ("azure", "https://finance-east.openai.azure.com/openai/v1", True),
        ("azure", "https://foundry.cognitiveservices.azure.com/openai/v1/", True),
        ("azure", "http://127.0.0.1:8000/sandbox/openai/v1", True),
        ("azure", "https://finance-east.openai.azure.com/openai/deployments/gpt-4o", False),
        ("azure", "http://finance-east.openai.azure.com/openai/v1/", False),
        ("azure", "https://api.openai.com/v1", False),
        ("azure", "https://evil.example.com/openai/v1/", False),
        ("compatible", "http://litellm.internal:4000/v1", True),
        ("openai", "https://api.openai.com:notaport/v1", False),
    ],
)
def test_it_takes_only_the_v1_api_base_of_an_azure_resource(kind, url, accepted):
    organization = {"organization": None, "project": None}
    text = with_research(kind=f'"{kind}"', base_url=f'"{url}"', **organization)

    if accepted:
        assert parse(text, "c.toml", ENV)[0].base_url == url
    else:
        assert refusal(text).line == line_of(text, "base_url = ")


def test_it_refuses_openai_headers_on_another_kind():
    text = with_research(kind='"compatible"', base_url='"http://127.0.0.1:4000/v1"')

    assert refusal(text).problem == "organization is an OpenAI header; a connection of kind compatible sends none"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "the file defines no [[connection]] table"),
        ('name = "x"\n', "unknown key 'name'"),
        ('[connections]\nname = "x"\n', "unknown key 'connections'"),
    ],
)
def test_it_refuses_a_file_without_connection_tables(text, says):
    assert says in refusal(text).problem


def test_it_names_a_missing_file(tmp_path):
    with pytest.raises(ConnectionFileError, match=r"nope\.toml: there is no such file"):
        load(tmp_path / "nope.toml", ENV)


def _check(tmp_path, text, *command, **env):
    path = tmp_path / "connections.toml"
    path.write_text(text)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment.update(env, BATCHBOARD_CONNECTIONS=str(path))
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *(command or ["check"])],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_stops_startup_naming_the_variable_the_file_and_the_line(tmp_path):
    result = _check(tmp_path, GOOD, **{**ENV, "FINANCE_KEY": ""})

    assert result.returncode != 0
    assert (
        "batchboard cannot start: BATCHBOARD_CONNECTIONS names a connections file that cannot be used:" in result.stderr
    )
    assert f"{tmp_path / 'connections.toml'}, line 21: api_key_env names the environment variable FINANCE_KEY" in (
        result.stderr
    )


def test_it_starts_with_a_good_file_and_serves_the_sandbox_only_to_a_local_install(tmp_path):
    show = ("shell", "-v", "0", "-c", "from django.conf import settings as s; print(s.SANDBOX_MODE, s.SANDBOX_ENABLED)")
    public = _check(tmp_path, GOOD, *show, **ENV, DJANGO_ALLOWED_HOSTS="batchboard.example.com")
    local = _check(tmp_path, GOOD, *show, **ENV)

    assert public.returncode == 0, public.stderr
    assert public.stdout.split() == ["False", "False"]  # no sandbox banner, no public sandbox, no refusal to start
    assert local.returncode == 0, local.stderr
    assert local.stdout.split() == ["False", "True"]
