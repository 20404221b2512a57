"""The audit log: every cancel (single and bulk), create, download and login is recorded with who, when, IP, what
and outcome; the detail page and `manage.py audit_log` show it; the API key never appears in it."""

import json
import logging
import re
import sys
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import Action, AuditEvent, Outcome
from batches import services
from batches.log_format import JsonFormatter, PlainFormatter
from batches.models import SyncState, record_batch
from batches.sync import LIST_STATE
from retries import auto
from retries.models import AutoRetry
from tests.conftest import kept_batch
from tests.fake_api import Reply, example

pytestmark = pytest.mark.django_db
User = get_user_model()

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

    events = AuditEvent.objects.filter(action__in=[Action.LOGIN, Action.LOGIN_FAILED]).order_by("pk")
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
        "system - user_add ok user operator: active",
        "system - permissions ok user operator: granted batches.cancel_batch, batches.create_batch",
        "operator - login ok",
        f"operator 10.1.1.1 cancel ok {batch['id']}",
    ]
    rows = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert [(r["username"], r["action"], r["batch_id"], r["ip"]) for r in rows] == [
        ("system", "user_add", "", None),
        ("system", "permissions", "", None),
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


# --- Finding 7 (issue 18): what a user sends never forges a line of the plain log or of `audit_log`'s text ----------

FORGED = "2026-12-06 08:00:00,000 INFO audit audit login ok by 'admin' from 10.0.0.1: INJECTED"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+ ")


@pytest.fixture
def console(settings):
    """What the console handler writes in the plain format, from every logger the settings send to it."""
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PlainFormatter(fmt=settings.LOGGING["formatters"]["plain"]["fmt"]))
    records = []
    counter = logging.Handler()
    counter.emit = records.append
    loggers = [logging.getLogger(name) for name in ("audit", "axes", "batches")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.addHandler(counter)
    yield stream, records
    for logger in loggers:
        logger.removeHandler(handler)
        logger.removeHandler(counter)


def _one_line_per_record(stream, records) -> list[str]:
    # str.splitlines breaks at \r, \x85, \u2028 and the rest too: what any reader could take for a new line.
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(records) > 0
    assert all(LINE_START.match(line) for line in lines), lines
    return lines


@pytest.mark.parametrize("breaker", ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\x0b"])
def test_finding_7_a_failed_login_name_with_a_line_break_forges_no_log_line(client, console, breaker):
    stream, records = console

    name = f"x{breaker}{FORGED}"
    client.post("/accounts/login/", {"username": name, "password": "guess-1234"}, REMOTE_ADDR="10.9.9.9")

    lines = _one_line_per_record(stream, records)
    assert not any(line.startswith(FORGED[:23]) for line in lines)
    assert any("INJECTED" in line and " audit audit login_failed refused " in line for line in lines)
    event = AuditEvent.objects.get(action=Action.LOGIN_FAILED)
    assert breaker not in event.username and "INJECTED" in event.username


def test_finding_7_an_invalid_input_file_id_forges_no_audit_line_and_is_stored_clean(operator_client, console):
    stream, records = console
    forged_cancel = "2026-12-06 08:00:00,000 INFO audit audit cancel ok by 'admin' from 10.0.0.1: batch_1"
    fields = {"token": str(uuid.uuid4()), "completion_window": "24h", "output_expiry_unit": "days"}

    operator_client.post("/batches/new/", {**fields, "input_file_id": f"file-x\x00\n{forged_cancel}" + "y" * 500})

    lines = _one_line_per_record(stream, records)
    assert not any(line.startswith(forged_cancel[:23]) for line in lines)
    event = AuditEvent.objects.get(action=Action.CREATE)
    assert event.outcome == Outcome.REFUSED
    assert event.target.startswith("file-x\\x00\\n2026-12-06") and len(event.target) == 200
    assert not any(char in event.target for char in "\n\r")


def test_finding_7_audit_log_text_prints_one_line_per_event_even_for_rows_stored_raw():
    # Rows written before targets were cleaned (or by any other path) hold the raw text.
    AuditEvent.objects.create(
        action=Action.CREATE, outcome=Outcome.REFUSED, username="operator", target=f"file-x\n{FORGED}"
    )
    AuditEvent.objects.create(
        action=Action.LOGIN_FAILED, outcome=Outcome.REFUSED, username=f"x\u2028{FORGED}", detail="a\rb\x1bc"
    )

    text, as_json = StringIO(), StringIO()
    call_command("audit_log", "--since", "1h", stdout=text)
    call_command("audit_log", "--since", "1h", "--json", stdout=as_json)

    lines = text.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"operator - create refused file-x\\n{FORGED}")
    assert f"x\\u2028{FORGED}" in lines[1] and lines[1].endswith(": a\\rb\\x1bc")
    rows = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert len(rows) == 2 and rows[1]["username"] == f"x\u2028{FORGED}"


def test_finding_7_a_traceback_stays_under_its_record_and_a_forged_exception_message_is_escaped():
    try:
        raise ValueError(f"bad id\n{FORGED}\r{FORGED}")
    except ValueError:
        record = logging.LogRecord("batches.x", logging.ERROR, __file__, 1, "failed %s", ("a\nb",), sys.exc_info())

    lines = PlainFormatter(fmt="%(asctime)s %(levelname)s %(name)s %(message)s").format(record).split("\n")

    assert LINE_START.match(lines[0]) and lines[0].endswith("failed a\\nb")
    assert lines[1] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in lines[1:])
    assert lines[-2] == "  ValueError: bad id" and lines[-1] == f"  {FORGED}\\r{FORGED}"


def test_finding_7_a_json_log_line_stays_one_line_with_unicode_line_breaks():
    record = logging.LogRecord("audit", logging.INFO, __file__, 1, "login by %s", (f"x\u2028{FORGED}\x85y",), None)

    line = JsonFormatter().format(record)

    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == f"login by x\u2028{FORGED}\x85y"


# --- Finding 9 (issue 18): passwords, accounts, groups, permissions and automatic retries are audited -------------


def _account_events(*actions):
    events = AuditEvent.objects.filter(action__in=actions).order_by("pk")
    return [(e.action, e.username, e.ip, e.target, e.detail, e.outcome) for e in events]


def _stored_text() -> str:
    return json.dumps(list(AuditEvent.objects.values()), default=str)


def test_finding_9_a_users_own_password_change_is_recorded_without_any_password(viewer_client, viewer):
    old_hash = viewer.password
    response = viewer_client.post(
        "/accounts/password_change/",
        {"old_password": "pw-viewer", "new_password1": "a-new-Secret-4711", "new_password2": "a-new-Secret-4711"},
        REMOTE_ADDR="10.3.3.3",
    )
    assert response.status_code == 302
    viewer.refresh_from_db()

    assert _account_events(Action.PASSWORD_CHANGE, Action.USER_CHANGE) == [
        (Action.PASSWORD_CHANGE, "viewer", "10.3.3.3", "user viewer", "their own password", Outcome.OK)
    ]
    stored = _stored_text()
    assert "a-new-Secret-4711" not in stored and "pw-viewer" not in stored
    assert old_hash not in stored and viewer.password not in stored and "pbkdf2" not in stored and "md5$" not in stored


def test_finding_9_an_admins_set_password_is_recorded_as_the_admins(admin_client, viewer):
    response = admin_client.post(
        f"/admin/auth/user/{viewer.pk}/password/",
        {"password1": "Another-Secret-0815", "password2": "Another-Secret-0815", "usable_password": "true"},
        REMOTE_ADDR="10.4.4.4",
    )
    assert response.status_code == 302

    assert _account_events(Action.PASSWORD_CHANGE) == [
        (Action.PASSWORD_CHANGE, "admin", "10.4.4.4", "user viewer", "set by an administrator or a command", Outcome.OK)
    ]
    assert "Another-Secret-0815" not in _stored_text()


def test_finding_9_a_login_and_a_hash_upgrade_are_not_account_changes(client, viewer, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher", *settings.PASSWORD_HASHERS]
    # Logging in stamps last_login and upgrades the MD5 hash the tests use: both are saves of the user.
    assert client.post("/accounts/login/", {"username": "viewer", "password": "pw-viewer"}).status_code == 302
    viewer.refresh_from_db()
    assert viewer.password.startswith("pbkdf2_")

    assert _account_events(Action.PASSWORD_CHANGE, Action.USER_CHANGE) == []


def _admin_user_form(user, **changes) -> dict:
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "initial-date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "initial-date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    data.update(changes)
    return {name: value for name, value in data.items() if value != ""}


def test_finding_9_an_admins_changes_to_a_user_are_recorded_with_who_and_where(admin_client):
    Group.objects.create(name="operators")
    AuditEvent.objects.all().delete()
    response = admin_client.post(
        "/admin/auth/user/add/",
        {
            "username": "carol",
            "password1": "Carol-Secret-2026",
            "password2": "Carol-Secret-2026",
            "usable_password": "true",
        },
        REMOTE_ADDR="10.5.5.5",
    )
    assert response.status_code == 302
    carol = User.objects.get(username="carol")
    operators = Group.objects.get(name="operators")
    cancel = Permission.objects.get(content_type__app_label="batches", codename="cancel_batch")

    response = admin_client.post(
        f"/admin/auth/user/{carol.pk}/change/",
        _admin_user_form(
            carol, is_staff="on", email="carol@example.com", groups=[operators.pk], user_permissions=[cancel.pk]
        ),
        REMOTE_ADDR="10.5.5.5",
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    response = admin_client.post(
        f"/admin/auth/user/{carol.pk}/change/", _admin_user_form(User.objects.get(pk=carol.pk)), REMOTE_ADDR="10.5.5.5"
    )
    assert response.status_code == 302
    assert (
        admin_client.post(f"/admin/auth/user/{carol.pk}/delete/", {"post": "yes"}, REMOTE_ADDR="10.5.5.5").status_code
        == 302
    )

    events = _account_events(*Action.values)
    assert [(action, who, ip, target) for action, who, ip, target, _detail, _outcome in events] == [
        (Action.USER_ADD, "admin", "10.5.5.5", "user carol"),
        (Action.USER_CHANGE, "admin", "10.5.5.5", "user carol"),
        (Action.MEMBERSHIP, "admin", "10.5.5.5", "user carol"),
        (Action.PERMISSIONS, "admin", "10.5.5.5", "user carol"),
        (Action.USER_CHANGE, "admin", "10.5.5.5", "user carol"),
        (Action.MEMBERSHIP, "admin", "10.5.5.5", "user carol"),
        (Action.PERMISSIONS, "admin", "10.5.5.5", "user carol"),
        (Action.USER_DELETE, "admin", "10.5.5.5", "user carol"),
    ]
    details = [detail for *_rest, detail, _outcome in events]
    assert details[0] == "active"
    assert details[1] == "changed email, is_staff: yes"
    assert details[2:7] == [
        "added to groups operators",
        "granted batches.cancel_batch",
        "changed is_staff: no",
        "removed from groups operators",
        "revoked batches.cancel_batch",
    ]
    assert "Carol-Secret-2026" not in _stored_text()


def test_finding_9_groups_their_members_and_their_permissions_are_recorded(admin_client, viewer):
    AuditEvent.objects.all().delete()
    create = Permission.objects.get(content_type__app_label="batches", codename="create_batch")
    response = admin_client.post("/admin/auth/group/add/", {"name": "creators", "permissions": [create.pk]})
    assert response.status_code == 302
    group = Group.objects.get(name="creators")
    admin_client.post(f"/admin/auth/group/{group.pk}/change/", {"name": "makers", "permissions": [create.pk]})
    group.refresh_from_db()
    group.user_set.add(viewer)  # from code: by "system"
    viewer.groups.clear()
    assert admin_client.post(f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"}).status_code == 302

    assert [
        (action, who, target, detail) for action, who, _ip, target, detail, _o in _account_events(*Action.values)
    ] == [
        (Action.GROUP_ADD, "admin", "group creators", ""),
        (Action.PERMISSIONS, "admin", "group creators", "granted batches.create_batch"),
        (Action.GROUP_CHANGE, "admin", "group makers", "changed name"),
        (Action.MEMBERSHIP, "system", "group makers", "added users viewer"),
        (Action.MEMBERSHIP, "system", "user viewer", "removed from groups makers"),
        (Action.GROUP_DELETE, "admin", "group makers", ""),
    ]


def test_finding_9_commands_are_recorded_as_the_system(db):
    call_command("createsuperuser", "--noinput", username="root", email="root@example.com", stdout=StringIO())
    root = User.objects.get(username="root")
    root.set_password("Root-Secret-1234")
    root.save()

    assert _account_events(Action.USER_ADD, Action.PASSWORD_CHANGE) == [
        (Action.USER_ADD, "system", None, "user root", "active, is_staff, is_superuser", Outcome.OK),
        (Action.PASSWORD_CHANGE, "system", None, "user root", "set by an administrator or a command", Outcome.OK),
    ]


def _history_imported():
    """Automatic retries wait for the history import (they must not retry what another install may have)."""
    SyncState.objects.update_or_create(name=LIST_STATE, defaults={"import_done_at": timezone.now()})


@pytest.mark.django_db(transaction=True)
def test_finding_9_a_batch_created_by_an_automatic_retry_is_recorded(sandbox_url, settings, tmp_path, tasks):
    settings.SANDBOX_SPEED = 1.0
    _history_imported()
    parent = kept_batch({"r-1": 429, "r-2": "ok"}, tmp_path, metadata={"batchboard_auto_retry": "1"})

    assert tasks.drain() >= 1

    claim = AutoRetry.objects.get(parent=parent)
    event = AuditEvent.objects.get(action=Action.CREATE)
    assert (event.username, event.user, event.ip, event.batch_id, event.outcome) == (
        auto.AUTO_USER,
        None,
        None,
        claim.retry_batch_id,
        Outcome.OK,
    )
    assert event.target.startswith(f"retry of {parent.batch_id}:") and event.target.endswith("(automatic)")


@pytest.mark.django_db(transaction=True)
def test_finding_9_a_failed_automatic_retry_is_recorded_with_its_reason(fake_api, tmp_path, tasks):
    fake_api.route("GET", "/batches", [Reply(body={"object": "list", "data": [], "has_more": False})])
    refused = {"error": {"message": "The file could not be stored.", "type": "invalid_request_error"}}
    fake_api.route("POST", "/files", [Reply(status=400, body=refused)])
    _history_imported()
    parent = kept_batch({"r-1": 429}, tmp_path, metadata={"batchboard_auto_retry": "1"})

    assert tasks.drain() >= 1

    event = AuditEvent.objects.get(action=Action.CREATE)
    assert (event.username, event.batch_id, event.outcome) == (auto.AUTO_USER, "", Outcome.ERROR)
    assert event.target.startswith(f"retry of {parent.batch_id}:") and event.detail


def test_finding_9_a_refused_password_change_is_recorded_without_what_was_typed(viewer_client):
    response = viewer_client.post(
        "/accounts/password_change/",
        {"old_password": "not-the-old-one-99", "new_password1": "x-Secret-77", "new_password2": "y-Secret-77"},
        REMOTE_ADDR="10.3.3.3",
    )
    assert response.status_code == 200

    assert _account_events(Action.PASSWORD_CHANGE) == [
        (
            Action.PASSWORD_CHANGE,
            "viewer",
            "10.3.3.3",
            "user viewer",
            "refused: new_password2, old_password",
            Outcome.REFUSED,
        )
    ]
    stored = _stored_text()
    assert "not-the-old-one-99" not in stored and "Secret-77" not in stored
