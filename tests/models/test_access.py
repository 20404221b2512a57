"""Who may view, cancel and create on which connection (batches.access, ConnectionQuerySet): the rules the pages'
access table (tests/views/test_access_matrix.py) checks through every URL."""

import pytest
from django.contrib.auth.models import AnonymousUser, Group, Permission

from batches import access
from batches.models import Batch, Connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def teams():
    return {name: Group.objects.create(name=name) for name in ("research", "research-leads", "finance")}


@pytest.fixture
def research(teams):
    connection = Connection.objects.create(name="Research", slug="research", base_url="http://127.0.0.1:9/v1")
    connection.view_teams.add(teams["research"])
    connection.cancel_teams.add(teams["research-leads"])
    connection.create_teams.add(teams["research-leads"])
    return connection


@pytest.fixture
def finance(teams):
    connection = Connection.objects.create(name="Finance", slug="finance", base_url="http://127.0.0.1:9/v1")
    connection.view_teams.add(teams["finance"])
    return connection


def _user(django_user_model, name, *teams, **flags):
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-1", **flags)
    user.groups.add(*teams)
    return django_user_model.objects.get(pk=user.pk)  # fresh: nothing cached on it


def _slugs(connections):
    return sorted(connection.slug for connection in connections)


def test_a_team_sees_the_connections_granted_to_it_and_acts_only_where_granted(
    django_user_model, teams, research, finance
):
    viewer = _user(django_user_model, "viewer", teams["research"])
    lead = _user(django_user_model, "lead", teams["research-leads"])

    assert _slugs(access.connections(viewer)) == ["default", "research"]  # "default" is open to everyone
    assert access.connections(viewer, access.CANCEL) == [] and access.connections(viewer, access.CREATE) == []
    assert _slugs(access.connections(lead)) == ["default", "research"]  # cancel and create imply view
    assert _slugs(access.connections(lead, access.CANCEL)) == ["research"]
    assert access.may(lead, access.CREATE, research) and not access.may(lead, access.CREATE, finance)


def test_the_open_connection_follows_the_django_permissions_as_before_connections(django_user_model, research):
    operator = _user(django_user_model, "operator")
    operator.user_permissions.add(Permission.objects.get(codename="cancel_batch"))
    operator = django_user_model.objects.get(pk=operator.pk)

    assert _slugs(access.connections(operator, access.CANCEL)) == ["default"]
    assert access.connections(operator, access.CREATE) == []


def test_nobody_outside_the_teams_sees_a_closed_connection_and_superusers_see_all(
    django_user_model, teams, research, finance
):
    Connection.objects.filter(slug="default").update(open_to_everyone=False)
    stranger = _user(django_user_model, "stranger")
    root = _user(django_user_model, "root", is_superuser=True)
    inactive = _user(django_user_model, "inactive", teams["research"], is_active=False)

    assert access.connections(stranger) == []
    assert list(access.visible_batches(stranger)) == []
    assert access.connections(inactive) == []
    assert access.connections(AnonymousUser()) == []
    assert _slugs(access.connections(root, access.CREATE)) == ["default", "finance", "research"]
    assert access.scope_key(root) == "all"


def test_visible_batches_are_those_of_the_viewers_connections_only(django_user_model, teams, research, finance):
    Batch.objects.create(
        connection=research, batch_id="batch_same", status="completed", created_at="2026-01-01T00:00Z", payload={}
    )
    Batch.objects.create(
        connection=finance, batch_id="batch_same", status="failed", created_at="2026-01-01T00:00Z", payload={}
    )
    viewer = _user(django_user_model, "viewer", teams["finance"])

    assert [batch.status for batch in access.visible_batches(viewer)] == ["failed"]
    assert access.scope_key(viewer) != access.scope_key(_user(django_user_model, "other", teams["research"]))


def test_nobody_creates_on_a_paused_connection_or_acts_on_one_kept_only_for_its_history(
    django_user_model, teams, research
):
    lead = _user(django_user_model, "lead", teams["research-leads"])
    Connection.objects.filter(pk=research.pk).update(paused=True)
    assert access.connections(lead, access.CREATE) == []
    assert _slugs(access.connections(lead, access.CANCEL)) == ["research"]

    Connection.objects.filter(pk=research.pk).update(paused=False, configured=False)
    lead = django_user_model.objects.get(pk=lead.pk)
    assert access.connections(lead, access.CREATE) == [] and access.connections(lead, access.CANCEL) == []
    assert _slugs(access.connections(lead)) == ["default", "research"]  # its history is still there to see


def test_the_grants_read_at_once_are_those_of_the_three_rules(django_user_model, teams, research, finance):
    """ConnectionQuerySet.grants_of (one query, what pages use) against viewable_by, cancellable_by, creatable_by."""
    finance.cancel_teams.add(teams["finance"])
    Connection.objects.create(name="Paused", slug="paused", paused=True, open_to_everyone=True).create_teams.add(
        teams["research-leads"]
    )
    Connection.objects.create(name="Kept", slug="kept", configured=False).cancel_teams.add(teams["finance"])
    operator = _user(django_user_model, "operator", teams["finance"])
    operator.user_permissions.add(*Permission.objects.filter(codename__in=("cancel_batch", "create_batch")))
    users = [
        _user(django_user_model, "nobody"),
        _user(django_user_model, "viewer", teams["research"]),
        _user(django_user_model, "lead", teams["research-leads"], teams["finance"]),
        django_user_model.objects.get(pk=operator.pk),
        _user(django_user_model, "inactive", teams["research"], is_active=False),
        _user(django_user_model, "root", is_superuser=True),
        AnonymousUser(),
    ]
    for user in users:
        viewable, cancellable, creatable, every = Connection.objects.grants_of(user)
        assert _slugs(viewable) == _slugs(Connection.objects.viewable_by(user)), user
        assert _slugs(cancellable) == _slugs(Connection.objects.cancellable_by(user)), user
        assert _slugs(creatable) == _slugs(Connection.objects.creatable_by(user)), user
        assert every == Connection.objects.count()


def test_a_page_reads_every_grant_of_a_viewer_in_a_fixed_number_of_queries(django_user_model, teams, research):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(8):
        Connection.objects.create(name=f"More {n}", slug=f"more-{n}").view_teams.add(teams["research"])
    viewer = _user(django_user_model, "viewer", teams["research"], teams["research-leads"])
    Connection.objects.default()

    with CaptureQueriesContext(connection) as queries:
        for action in (access.VIEW, access.CANCEL, access.CREATE):
            access.connections(viewer, action)
        access.sees_everything(viewer)
        access.scope_key(viewer)

    # The user's teams, every connection with the teams' grants (the default one among them: not read apart), and
    # the user's Django permissions (two queries, read once), which the default connection, open to everyone, asks for.
    assert len(queries) == 4


@pytest.mark.parametrize("superuser", [False, True])
def test_the_default_connection_is_made_for_a_viewer_of_a_database_without_it(django_user_model, research, superuser):
    Connection.objects.filter(slug="default").delete()
    viewer = _user(django_user_model, "viewer", is_superuser=superuser)

    assert "default" in _slugs(access.connections(viewer))  # open to everyone, made by the first read of grants
    assert Connection.objects.filter(slug="default").count() == 1
