"""A single-key install from before connections upgrades with `migrate` and keeps its history, links and audit log:
every row it had belongs to the connection its OPENAI_* settings define ("default"), which every signed-in user
still sees."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from batches.models import Batch, BatchSnapshot, Connection, DailySpend, UpstreamMinute
from sharing.models import ShareLink, token_hash

BEFORE = [
    ("batches", "0016_lineage_from_metadata"),
    ("sharing", "0001_share_links"),
    ("audit", "0003_share_link_actions"),
]
TOKEN = "t" * 43


@pytest.mark.django_db(transaction=True)
def test_an_install_from_before_connections_keeps_its_batches_links_and_audit_log(client, django_user_model):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    now = timezone.now()
    batch = old.get_model("batches", "Batch").objects.create(
        batch_id="batch_before1", status="completed", is_terminal=True, endpoint="/v1/chat/completions",
        model="gpt-4o-mini", created_at=now, finished_at=now, total_requests=2, completed_requests=2,
        payload={"id": "batch_before1", "status": "completed"}, payload_hash="h1",
    )  # fmt: skip
    old.get_model("batches", "BatchSnapshot").objects.create(
        batch=batch, status="completed", payload={"id": "batch_before1"}, payload_hash="h1"
    )
    old.get_model("batches", "DailySpend").objects.create(day=now.date(), model="gpt-4o-mini", batches=1)
    old.get_model("batches", "UpstreamMinute").objects.create(minute=int(now.timestamp() // 60), calls=3)
    old.get_model("sharing", "ShareLink").objects.create(
        batch=batch, token_hash=token_hash(TOKEN), expires_at=now + timedelta(days=1)
    )
    old.get_model("audit", "AuditEvent").objects.create(action="cancel", batch_id="batch_before1", outcome="ok")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    default = Connection.objects.get(slug="default")
    assert default.open_to_everyone and default.source == "settings"
    upgraded = Batch.objects.get(batch_id="batch_before1")
    assert upgraded.connection == default
    assert BatchSnapshot.objects.filter(batch=upgraded).count() == 1
    assert DailySpend.objects.get().connection == default
    assert UpstreamMinute.objects.get().connection == default
    assert ShareLink.objects.by_token(TOKEN).batch == upgraded
    assert client.get(f"/shared/{TOKEN}/").status_code == 200  # the link made before still opens the batch

    viewer = django_user_model.objects.create_user("viewer", password="pw-viewer-1")
    client.force_login(viewer)
    page = client.get("/batches/batch_before1/")
    assert page.status_code == 200 and b"batch_before1" in page.content
    assert b"batch_before1" in client.get("/batches/").content
