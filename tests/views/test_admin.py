"""The Django admin shows batches and snapshots to staff, read-only, with search, filters and pretty payloads."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batches import services
from batches.models import Batch, BatchSnapshot, record_batch
from tests.reference import EXAMPLES

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(name, batch_id, *, minutes=0, completed=None, **changes):
    data = json.loads((EXAMPLES / name).read_text())
    data.update(id=batch_id, **changes)
    if completed is not None:
        data["request_counts"] = {**data["request_counts"], "completed": completed}
    return record_batch(services.ApiBatch.from_api(data), observed_at=T0 + timedelta(minutes=minutes))


@pytest.fixture
def batches():
    """A running batch with three snapshots, a completed one, and one whose metadata tries to inject markup."""
    for minute, completed in enumerate([0, 1, 2]):
        record("batch.in_progress.json", "batch_running", minutes=minute, completed=completed)
    record("batch.completed.json", "batch_done", metadata={"project": "quarterly-report"})
    record(
        "batch.in_progress.json",
        "batch_sneaky",
        endpoint="/v1/embeddings",
        created_at=int(datetime(2025, 6, 1, tzinfo=UTC).timestamp()),
        metadata={"note": "<script>alert(1)</script>"},
    )
    return {b.batch_id: b for b in Batch.objects.all()}


def changelist(model):
    return reverse(f"admin:batches_{model}_changelist")


def listed(response):
    return {str(obj) for obj in response.context["cl"].result_list}


def test_it_lists_batches_for_a_superuser(admin_client, batches):
    response = admin_client.get(changelist("batch"))

    assert response.status_code == 200
    assert listed(response) == {"batch_running", "batch_done", "batch_sneaky"}


def test_it_shows_a_batch_with_its_payload_pretty_printed_and_escaped(admin_client, batches):
    response = admin_client.get(reverse("admin:batches_batch_change", args=[batches["batch_sneaky"].pk]))
    html = response.content.decode()

    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;status&quot;: &quot;in_progress&quot;" in html  # indented JSON, one key per line
    assert "\n  &quot;status&quot;" in html
    assert reverse("batches:detail", args=["batch_sneaky"]) in html
    assert f"?batch__id__exact={batches['batch_sneaky'].pk}" in html


def test_it_searches_batches_by_id_and_metadata(admin_client, batches):
    assert listed(admin_client.get(changelist("batch"), {"q": "batch_done"})) == {"batch_done"}
    assert listed(admin_client.get(changelist("batch"), {"q": "QUARTERLY"})) == {"batch_done"}


def test_it_filters_batches_by_status_endpoint_and_date(admin_client, batches):
    url = changelist("batch")

    assert listed(admin_client.get(url, {"status__exact": "completed"})) == {"batch_done"}
    assert listed(admin_client.get(url, {"endpoint": "/v1/embeddings"})) == {"batch_sneaky"}
    assert listed(admin_client.get(url, {"created_at__year": "2025"})) == {"batch_sneaky"}


def test_it_lists_filters_and_searches_snapshots(admin_client, batches):
    url = changelist("batchsnapshot")
    running = batches["batch_running"]

    response = admin_client.get(url)
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 5
    by_batch = admin_client.get(url, {"batch__id__exact": running.pk})
    assert {s.batch_id for s in by_batch.context["cl"].result_list} == {running.pk}
    assert len(by_batch.context["cl"].result_list) == 3
    assert listed(admin_client.get(url, {"status__exact": "completed"})) == {
        str(BatchSnapshot.objects.get(status="completed"))
    }
    assert len(admin_client.get(url, {"q": "batch_running"}).context["cl"].result_list) == 3
    assert len(admin_client.get(url, {"batch__endpoint": "/v1/embeddings"}).context["cl"].result_list) == 1


def test_it_shows_a_snapshot_with_its_payload(admin_client, batches):
    snapshot = BatchSnapshot.objects.filter(batch__batch_id="batch_sneaky").get()
    response = admin_client.get(reverse("admin:batches_batchsnapshot_change", args=[snapshot.pk]))
    html = response.content.decode()

    assert response.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html


def test_it_lists_snapshots_in_a_constant_number_of_queries(admin_client, batches):
    url = changelist("batchsnapshot")
    admin_client.get(url)  # warm the session and content types

    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for minute in range(3, 30):
        record("batch.in_progress.json", "batch_running", minutes=minute, completed=minute)
    with CaptureQueriesContext(connection) as many:
        admin_client.get(url)

    assert len(many) == len(few)
    assert not any('"payload"' in q["sql"] for q in many.captured_queries)  # only payload_hash


@pytest.mark.parametrize("model", ["batch", "batchsnapshot"])
def test_it_forbids_adding_changing_and_deleting(admin_client, batches, model):
    obj = batches["batch_done"] if model == "batch" else BatchSnapshot.objects.first()
    before = (Batch.objects.count(), BatchSnapshot.objects.count())

    assert admin_client.get(reverse(f"admin:batches_{model}_add")).status_code == 403
    assert admin_client.post(reverse(f"admin:batches_{model}_add"), {}).status_code == 403
    change = reverse(f"admin:batches_{model}_change", args=[obj.pk])
    response = admin_client.post(change, {"status": "cancelled"})
    assert response.status_code == 403
    assert (
        admin_client.post(reverse(f"admin:batches_{model}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    )
    bulk = admin_client.post(
        changelist(model), {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)

    assert (Batch.objects.count(), BatchSnapshot.objects.count()) == before
    obj.refresh_from_db()
    assert obj.status != "cancelled"
    html = admin_client.get(changelist(model)).content.decode()
    assert "delete_selected" not in html
    assert reverse(f"admin:batches_{model}_add") not in html


def test_it_lets_staff_with_view_permission_look(client, django_user_model, batches):
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_batch", "view_batchsnapshot"]))
    client.force_login(staff)

    assert client.get(changelist("batch")).status_code == 200
    assert client.get(reverse("admin:batches_batch_change", args=[batches["batch_done"].pk])).status_code == 200
    assert client.get(changelist("batchsnapshot")).status_code == 200
    assert client.get(reverse("admin:batches_batch_add")).status_code == 403


def test_it_keeps_users_without_staff_status_out(viewer_client, batches):
    response = viewer_client.get(changelist("batch"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_it_lists_reactions_with_the_reason_they_failed(admin_client, batches):
    from batches.models import Reaction

    Reaction.objects.create(batch=batches["batch_done"], step="keep_results", state="failed", error="disk full")

    response = admin_client.get(changelist("reaction") + "?state=failed&q=disk")

    assert response.status_code == 200
    assert listed(response) == {f"keep_results of batch #{batches['batch_done'].pk} (attempt 0): failed"}
    assert admin_client.get(reverse("admin:batches_reaction_add")).status_code == 403
