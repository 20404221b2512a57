"""The audit log: every cancel (single and bulk), create, download and login is recorded with who, when, IP, what
and outcome; the detail page and `manage.py audit_log` show it; the API key never appears in it."""

import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import Action, AuditEvent, Outcome
from batches import services
from batches.models import record_batch
from tests.fake_api import Reply, example

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/batches/"}


def _events(**filters):
    return list(AuditEvent.objects.filter(**filters).order_by("pk").values_list("action", "batch_id", "outcome"))


def test_it_records_a_cancel_with_who_ip_and_outcome(api, operator_client):
    batch = api.add("in_progress")

    operator_client.post(f"/batches/{batch['id']}/cancel/", REMOTE_ADDR="10.1.2.3")
    operator_client.post(f"/batches/{batch['id']}/cancel/", REMOTE_ADDR="10.1.2.3")

    events = AuditEvent.objects.filter(action=Action.CANCEL).order_by("pk")
    assert [(e.username, e.ip, e.batch_id, e.outcome) for e in events] == [
        ("operator", "10.1.2.3", batch["id"], Outcome.OK),
        ("operator", "10.1.2.3", batch["id"], Outcome.ALREADY),
    ]
    assert events[0].user.username == "operator"


def test_it_records_a_failed_cancel_and_a_forbidden_one(api, operator_client, viewer, client):
    batch = api.add("in_progress")
    api.cancel_reply = Reply(500, {"error": {"message": "boom"}}, {"x-should-retry": "false"})
    operator_client.post(f"/batches/{batch['id']}/cancel/")
    client.force_login(viewer)
    assert client.post(f"/batches/{batch['id']}/cancel/").status_code == 403

    assert _events(action=Action.CANCEL) == [
        (Action.CANCEL, batch["id"], Outcome.ERROR),
        (Action.CANCEL, batch["id"], Outcome.REFUSED),
    ]
    assert AuditEvent.objects.filter(outcome=Outcome.REFUSED).get().username == "viewer"


def test_it_records_each_batch_of_a_bulk_cancel(api, operator_client):
    first, second = api.add("in_progress"), api.add("in_progress")

    operator_client.post("/batches/cancel/", {"batch_id": [first["id"], second["id"]], "confirm": "yes"}, **HTMX)

    assert sorted(_events(action=Action.CANCEL)) == sorted(
        [(Action.CANCEL, first["id"], Outcome.OK), (Action.CANCEL, second["id"], Outcome.OK)]
    )
    assert set(AuditEvent.objects.filter(action=Action.CANCEL).values_list("target", flat=True)) == {"bulk"}


def test_it_records_creates_refused_and_done(operator_client, sandbox_url):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}
    fields = {"token": str(uuid.uuid4()), "completion_window": "24h", "output_expiry_unit": "days"}
    bad = SimpleUploadedFile("bad.jsonl", b"not json\n")
    operator_client.post("/batches/new/", {**fields, "input_file": bad})
    good = SimpleUploadedFile("good.jsonl", (json.dumps(line) + "\n").encode())
    response = operator_client.post("/batches/new/", {**fields, "input_file": good})
    batch_id = response["Location"].strip("/").rsplit("/", 1)[-1]

    events = AuditEvent.objects.filter(action=Action.CREATE).order_by("pk")
    assert [(e.outcome, e.target, e.batch_id) for e in events] == [
        (Outcome.REFUSED, "bad.jsonl", ""),
        (Outcome.OK, "good.jsonl", batch_id),
    ]
    assert "Line 1: not valid JSON" in events[0].detail


def test_it_records_downloads_and_failed_ones(viewer_client, fake_api):
    record_batch(services.ApiBatch.from_api(example("batch.completed.json")))
    fake_api.script("GET", "/files/file-cvaTdG/content", Reply(200, b"{}\n"))

    b"".join(viewer_client.get("/batches/batch_abc123/files/output/").streaming_content)
    viewer_client.get("/batches/batch_abc123/files/error/")  # the fake API has no such file: 404

    events = AuditEvent.objects.filter(action=Action.DOWNLOAD).order_by("pk")
    assert [(e.username, e.target, e.outcome) for e in events] == [
        ("viewer", "output", Outcome.OK),
        ("viewer", "error", Outcome.ERROR),
    ]


def test_it_shows_who_cancelled_on_the_detail_page(api, operator_client):
    batch = api.add("in_progress")
    operator_client.post(f"/batches/{batch['id']}/cancel/")
    event = AuditEvent.objects.get(action=Action.CANCEL)

    html = operator_client.get(f"/batches/{batch['id']}/").content.decode()

    assert f'Cancelled by operator at <time datetime="{event.at.isoformat()}"' in html.replace("+00:00", "+00:00")
    assert f"{event.at:%H:%M}</time>" in html


def test_it_records_logins_and_failed_logins_from_both_login_views(client, viewer):
    client.post("/accounts/login/", {"username": "viewer", "password": "not-it-123"}, REMOTE_ADDR="10.0.0.9")
    client.post("/admin/login/", {"username": "viewer", "password": "not-it-123"}, REMOTE_ADDR="10.0.0.9")
    client.post("/accounts/login/", {"username": "viewer", "password": "pw-viewer"}, REMOTE_ADDR="10.0.0.9")

    events = AuditEvent.objects.exclude(action=Action.LOGOUT).order_by("pk")
    assert [(e.action, e.username, e.ip, e.target) for e in events] == [
        (Action.LOGIN_FAILED, "viewer", "10.0.0.9", "/accounts/login/"),
        (Action.LOGIN_FAILED, "viewer", "10.0.0.9", "/admin/login/"),
        (Action.LOGIN, "viewer", "10.0.0.9", "/accounts/login/"),
    ]
    stored = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert "not-it-123" not in stored and "pw-viewer" not in stored


def test_it_never_stores_the_api_key(api, operator_client, settings):
    settings.OPENAI_API_KEY = "sk-live-very-secret-key"
    batch = api.add("in_progress")
    api.cancel_reply = Reply(400, {"error": {"message": "bad key sk-live-very-secret-key"}}, {"x-should-retry": "0"})
    operator_client.post(f"/batches/{batch['id']}/cancel/")

    stored = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert "sk-live-very-secret-key" not in stored
    out = StringIO()
    call_command("audit_log", "--json", stdout=out)
    assert "sk-live-very-secret-key" not in out.getvalue()


def test_the_command_prints_events_since_a_duration_as_text_or_json(api, operator_client):
    batch = api.add("in_progress")
    operator_client.post(f"/batches/{batch['id']}/cancel/", REMOTE_ADDR="10.1.1.1")
    old = AuditEvent.objects.create(action=Action.LOGIN, outcome=Outcome.OK, username="old")
    AuditEvent.objects.filter(pk=old.pk).update(at=old.at - timedelta(days=8))

    text, as_json = StringIO(), StringIO()
    call_command("audit_log", "--since", "7d", stdout=text)
    call_command("audit_log", "--since", "7d", "--json", stdout=as_json)

    lines = text.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "operator - login ok",
        f"operator 10.1.1.1 cancel ok {batch['id']}",
    ]
    rows = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert [(r["username"], r["action"], r["batch_id"], r["ip"]) for r in rows] == [
        ("operator", "login", "", None),
        ("operator", "cancel", batch["id"], "10.1.1.1"),
    ]
    with pytest.raises(CommandError, match="--since"):
        call_command("audit_log", "--since", "soon")


def test_the_admin_shows_the_log_read_only(admin_client, api):
    AuditEvent.objects.create(action=Action.LOGIN, outcome=Outcome.OK, username="alice")

    assert "alice" in admin_client.get("/admin/audit/auditevent/").content.decode()
    event = AuditEvent.objects.get(username="alice")
    assert admin_client.post(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/audit/auditevent/add/").status_code == 403
