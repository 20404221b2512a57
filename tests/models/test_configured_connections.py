"""The connections file applied to the database: rows of source "file" without their keys, teams granted, tables
removed from the file kept unconfigured, the default connection's state, idempotence, and the calls going where the
file says (the sandbox's two organisations, both auth styles, over real HTTP)."""

import threading

import pytest
from django.contrib.auth.models import Group
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection as db_connection

from batches import access, configured_connections, services, sync
from batches.configured_connections import Applied, apply_connection_file
from batches.connections import KeyMissing
from batches.models import Batch, Connection, ConnectionSource
from tests.conftest import create_batches

pytestmark = pytest.mark.django_db

TWO = """\
[[connection]]
name = "Research"
slug = "research"
kind = "openai"
base_url = "{url}/sandbox/v1"
api_key_env = "TEST_RESEARCH_KEY"
budget_per_minute = 90
teams = {{ view = ["research"], cancel = ["research-leads"], create = ["research-leads"] }}

[[connection]]
name = "Finance"
slug = "finance"
kind = "azure"
base_url = "{url}/sandbox/openai/v1"
api_key_env = "TEST_FINANCE_KEY"

[connection.teams]
view = ["finance"]
"""
RESEARCH_ONLY = TWO.split("\n\n")[0] + "\n"


@pytest.fixture
def connections_file(settings, tmp_path, monkeypatch):
    """Write a connections file and point BATCHBOARD_CONNECTIONS at it; the sandbox's two public keys in the
    variables it names. Each test's process applies the configuration afresh."""
    monkeypatch.setenv("TEST_RESEARCH_KEY", "sk-sandbox")
    monkeypatch.setenv("TEST_FINANCE_KEY", "sk-sandbox-second")
    path = tmp_path / "connections.toml"

    def write(text, url="http://127.0.0.1:8000"):
        path.write_text(text.format(url=url))
        settings.BATCHBOARD_CONNECTIONS = str(path)
        return path

    applied = configured_connections.forget_applied()
    yield write
    configured_connections.restore_applied(applied)  # the database is rolled back to what it was


def rows():
    return {c.slug: c for c in Connection.objects.all()}


def teams(connection, grant):
    return sorted(getattr(connection, grant).values_list("name", flat=True))


def test_it_makes_a_row_per_table_without_the_key_and_grants_the_teams(connections_file):
    connections_file(TWO)

    applied = apply_connection_file()

    research, finance = rows()["research"], rows()["finance"]
    assert applied == Applied(created=2, updated=1, unconfigured=0)  # updated: the default one, now unconfigured
    assert (research.source, research.kind, research.api_key_env, research.api_key_encrypted) == (
        ConnectionSource.FILE,
        "openai",
        "TEST_RESEARCH_KEY",
        "",
    )
    assert research.budget_per_minute == 90 and research.configured and not research.open_to_everyone
    assert teams(research, "view_teams") == ["research"]
    assert teams(research, "cancel_teams") == teams(research, "create_teams") == ["research-leads"]
    assert (finance.kind, finance.base_url) == ("azure", "http://127.0.0.1:8000/sandbox/openai/v1")
    assert teams(finance, "view_teams") == ["finance"] and teams(finance, "create_teams") == []
    assert set(Group.objects.values_list("name", flat=True)) == {"research", "research-leads", "finance"}


def test_applying_twice_changes_nothing(connections_file, django_assert_max_num_queries):
    connections_file(TWO)
    apply_connection_file()
    before = {slug: (c.pk, c.name, c.base_url) for slug, c in rows().items()}

    with django_assert_max_num_queries(16):  # reads only: per connection its row, its groups and its three grants
        again = apply_connection_file()

    assert again == Applied()
    assert {slug: (c.pk, c.name, c.base_url) for slug, c in rows().items()} == before
    assert Group.objects.count() == 3


def test_it_follows_a_changed_file(connections_file):
    connections_file(TWO)
    apply_connection_file()
    connections_file(TWO.replace('"Finance"', '"Finance EMEA"').replace('view = ["finance"]', 'view = ["emea"]'))

    applied = apply_connection_file()

    finance = rows()["finance"]
    assert applied == Applied(updated=1)
    assert finance.name == "Finance EMEA" and teams(finance, "view_teams") == ["emea"]


def test_a_table_removed_from_the_file_leaves_an_unconfigured_row_with_its_history(connections_file):
    connections_file(TWO)
    apply_connection_file()
    Batch.objects.create(
        connection=rows()["finance"],
        batch_id="batch_old",
        status="completed",
        created_at="2026-01-01T00:00Z",
        payload={},
    )
    connections_file(RESEARCH_ONLY)

    applied = apply_connection_file()

    finance = rows()["finance"]
    assert applied == Applied(unconfigured=1)
    assert not finance.configured and finance.batches.count() == 1
    assert "finance" not in [c.slug for c in Connection.objects.syncing()]
    with pytest.raises(KeyMissing, match="kept for its history only"):
        finance.upstream()
    connections_file(TWO)
    apply_connection_file()
    assert rows()["finance"].configured  # back in the file, back in service


def test_the_default_connection_is_configured_without_a_file_or_with_a_key(connections_file, settings):
    settings.OPENAI_API_KEY = ""
    apply_connection_file()
    assert rows()["default"].configured  # sandbox mode without a file

    connections_file(TWO)
    apply_connection_file()
    default = rows()["default"]
    assert not default.configured and default.source == ConnectionSource.SETTINGS
    with pytest.raises(KeyMissing, match="OPENAI_API_KEY is not set"):
        default.upstream()

    settings.OPENAI_API_KEY = "sk-test-beside-the-file"
    apply_connection_file()
    assert rows()["default"].configured


def test_the_default_connection_made_later_follows_the_configuration(connections_file):
    connections_file(TWO)
    Connection.objects.filter(slug="default").delete()

    assert not Connection.objects.default().configured


def test_the_file_takes_over_a_connection_of_the_admin_with_its_slug_but_not_its_key(connections_file):
    Connection.objects.create(
        slug="finance", name="Old finance", source=ConnectionSource.ADMIN, api_key_encrypted="gAAAAA-stored"
    )
    connections_file(TWO)

    apply_connection_file()

    finance = rows()["finance"]
    assert (finance.source, finance.name, finance.api_key_env, finance.api_key_encrypted) == (
        ConnectionSource.FILE,
        "Finance",
        "TEST_FINANCE_KEY",
        "",
    )


def test_a_creation_lost_to_another_process_reads_the_winners_row(connections_file):
    winner = Connection.objects.create(slug="research", name="Research", source=ConnectionSource.FILE)

    connection, created = configured_connections._create("research", {"name": "Research"})

    assert (connection.pk, created) == (winner.pk, False)


def test_each_process_applies_the_file_before_it_first_reads_connections(connections_file, django_user_model):
    connections_file(TWO)
    researcher = django_user_model.objects.create_user("rita")
    researcher.groups.add(Group.objects.create(name="research"))

    visible = {c.slug for c in access.connections(researcher)}

    assert visible == {"research", "default"}  # the default connection is open to everyone, for its history
    assert not access.may(researcher, access.VIEW, rows()["finance"])


def test_the_calls_go_where_the_file_says_with_each_organisations_key_and_auth_style(connections_file, sandbox_url):
    create_batches(2)  # in the sandbox's first organisation, through the default connection (no file yet)
    connections_file(TWO, url=sandbox_url.removesuffix("/sandbox/v1"))
    configured_connections.ensure_applied()
    research, finance = rows()["research"], rows()["finance"]

    assert finance.upstream().auth == services.API_KEY_HEADER
    assert len(services.get_client(connection=finance).list_batches().data) == 0  # the second organisation's
    outcome = sync.run_pass(force=True, connection=research)

    assert not outcome.error
    assert Batch.objects.filter(connection=research).count() == 2


def test_migrate_applies_the_file(connections_file):
    connections_file(TWO)

    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    assert set(rows()) == {"default", "research", "finance"}


@pytest.mark.postgresql  # two writers at once: SQLite would serialise them on its database lock instead
@pytest.mark.django_db(transaction=True)
def test_two_processes_applying_at_once_make_each_row_and_grant_once(connections_file):
    connections_file(TWO)
    start = threading.Barrier(2)
    failures = []

    def apply():
        try:
            start.wait()
            apply_connection_file()
        except Exception as exc:  # reported below, with its type
            failures.append(repr(exc))
        finally:
            db_connection.close()

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert sorted(rows()) == ["default", "finance", "research"]
    assert Group.objects.count() == 3
    assert teams(rows()["research"], "cancel_teams") == ["research-leads"]
