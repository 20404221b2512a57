"""/readyz with several connections: each syncing connection's loop must be alive; a paused one is not asked."""

import pytest
from django.utils import timezone

from batches.models import Connection, SyncState

pytestmark = pytest.mark.django_db


def _synced(connection: Connection) -> None:
    now = timezone.now()
    SyncState.objects.update_or_create(
        name=connection.list_state, defaults={"heartbeat_at": now, "succeeded_at": now, "claimed_at": now}
    )


def test_readyz_names_the_connection_whose_loop_never_ran_and_skips_a_paused_one(client):
    _synced(Connection.objects.default())
    lab = Connection.objects.create(name="Lab", slug="lab", base_url="http://127.0.0.1:9/v1")

    response = client.get("/readyz")
    assert response.status_code == 503
    assert (
        response.text
        == "not ready: the sync loop of connection lab has never run (is `manage.py sync_batches --loop` running?)\n"
    )

    Connection.objects.filter(pk=lab.pk).update(paused=True)
    assert client.get("/readyz").text == "ready\n"
