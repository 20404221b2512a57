"""A viewer of some connections: their batches only, newest first, and only theirs counted (the query shape of
BatchQuerySet.in_connections differs per database; the answers must not)."""

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from batches import access
from batches.models import Batch, Connection, record_batch
from tests.conftest import CREATED, completed, observation

pytestmark = pytest.mark.django_db


def _connections(count):
    return [Connection.objects.create(name=f"Team {n}", slug=f"team-{n}") for n in range(count)]


def _record(connections):
    """Batch n of connection c is created n minutes after the first; every third one is still running."""
    for number in range(12):
        for connection in connections:
            batch_id = f"batch_{connection.slug}_{number:02d}"
            created = {"created_at": CREATED + number * 60}
            payload = (
                observation(batch_id, processed=3, **created) if number % 3 == 0 else completed(batch_id, **created)
            )
            record_batch(payload, connection=connection)


def test_it_keeps_only_those_connections_newest_first():
    first, second, third = _connections(3)
    _record([first, second, third])

    rows = list(Batch.objects.in_connections([first.pk, third.pk]).order_by("-created_at", "-batch_id")[:6])

    assert [row.batch_id for row in rows] == [
        "batch_team-2_11",
        "batch_team-0_11",
        "batch_team-2_10",
        "batch_team-0_10",
        "batch_team-2_09",
        "batch_team-0_09",
    ]


def test_it_counts_only_those_connections():
    first, second, third = _connections(3)
    _record([first, second, third])

    visible = Batch.objects.in_connections([second.pk])

    assert visible.status_counts() == {"in_progress": 4, "completed": 8}
    assert visible.summary(since=timezone.now())["running"] == 4
    assert visible.endpoints_and_models()[0] == ["/v1/chat/completions"]
    assert Batch.objects.in_connections([]).count() == 0


def test_it_shows_a_team_viewer_only_their_connections_batches(client, django_user_model):
    first, second, _third = _connections(3)
    Connection.objects.filter(slug="default").update(open_to_everyone=False)
    _record([first, second])
    team = Group.objects.create(name="search")
    team.connections_viewed.set([second])
    viewer = django_user_model.objects.create_user("team-viewer")
    viewer.groups.set([team])
    client.force_login(viewer)

    page = client.get("/batches/").text

    assert access.visible_batches(viewer).count() == 12
    assert "batch_team-1_11" in page
    assert "batch_team-0_11" not in page
