"""The webhook receiver (/webhooks/openai/ for the default connection, /webhooks/openai/<slug>/ for each one):
Standard Webhooks signatures checked by the reference's test vectors, refusals (no or a bad signature, another
connection's secret, an old timestamp, a large body), replays per connection, the task that fetches the batch from
the connection that received it, and "last webhook received" per connection."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
import time_machine
from django.test import Client
from standardwebhooks.webhooks import Webhook

from batches.models import Batch, Connection, ConnectionKind, ConnectionSource
from tests.reference import EXAMPLES
from webhooks import receiving
from webhooks.models import Delivery, Refusals

VECTORS = json.loads((EXAMPLES / "webhook.signature_test_vectors.json").read_text())["vectors"]
SECRET = VECTORS[0]["secret"]
URL = "/webhooks/openai/"


@pytest.fixture(autouse=True)
def _secret(settings):
    settings.BATCHBOARD_WEBHOOK_SECRET = SECRET


@pytest.fixture
def hook_client():
    """A client that sends no session and enforces CSRF, like the API's webhook sender."""
    return Client(enforce_csrf_checks=True)


def event(batch_id: str = "batch_abc123", event_type: str = "batch.completed", **fields) -> bytes:
    body = {"id": "evt_" + batch_id, "object": "event", "type": event_type, "created_at": int(time.time())}
    body["data"] = {"id": batch_id}
    body.update(fields)
    return json.dumps(body).encode()


def signed_headers(body: bytes, *, webhook_id: str = "wh_1", at: float | None = None, secret: str = SECRET) -> dict:
    """The headers the API sends, signed with the `standardwebhooks` library (the reference's algorithm)."""
    moment = datetime.fromtimestamp(at if at is not None else time.time(), tz=UTC)
    signature = Webhook(secret).sign(webhook_id, moment, body)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(moment.timestamp())), "webhook-signature": signature}


def post(client, body: bytes, headers: dict):
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return client.post(URL, data=body, content_type="application/json", **extra)


# --- The reference's test vectors -------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["source"][:40] for vector in VECTORS])
def test_it_verifies_the_reference_vectors_and_refuses_the_tampered_one(db, vector):
    body = vector["raw_body"].encode()
    with time_machine.travel(int(vector["headers"]["webhook-timestamp"]), tick=False):
        if vector["expected"] == "valid":
            assert receiving.verify(vector["secret"], body, vector["headers"])["id"].startswith("evt_")
        else:
            with pytest.raises(receiving.Refused):
                receiving.verify(vector["secret"], body, vector["headers"])


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["source"][:40] for vector in VECTORS])
def test_it_answers_the_reference_vectors_through_the_view(db, hook_client, vector):
    with time_machine.travel(int(vector["headers"]["webhook-timestamp"]), tick=False):
        response = post(hook_client, vector["raw_body"].encode(), vector["headers"])
    assert response.status_code == (200 if vector["expected"] == "valid" else 400)
    assert Delivery.objects.count() == (1 if vector["expected"] == "valid" else 0)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda headers: headers | {"webhook-id": "wh_other"},
        lambda headers: headers | {"webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)},
        lambda headers: headers | {"webhook-signature": headers["webhook-signature"].replace("v1,t", "v1,u")},
        lambda headers: headers | {"webhook-signature": headers["webhook-signature"].removeprefix("v1,")},
    ],
    ids=["id", "timestamp", "signature", "unversioned"],
)
def test_it_refuses_a_vector_whose_headers_were_tampered_with(db, hook_client, tamper):
    vector = VECTORS[1]
    with time_machine.travel(int(vector["headers"]["webhook-timestamp"]), tick=False):
        response = post(hook_client, vector["raw_body"].encode(), tamper(dict(vector["headers"])))
    assert response.status_code == 400
    assert not Delivery.objects.exists()


# --- Refusals -----------------------------------------------------------------------


def test_it_refuses_a_delivery_without_a_signature_and_counts_it(db, hook_client, tasks):
    body = event()
    headers = signed_headers(body)
    del headers["webhook-signature"]
    response = post(hook_client, body, headers)
    assert response.status_code == 400
    assert not Delivery.objects.exists()
    assert tasks.waiting() == 0
    assert Refusals.objects.get().count == 1


def test_it_refuses_a_delivery_signed_with_another_secret(db, hook_client, tasks, caplog):
    body = event()
    other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    response = post(hook_client, body, signed_headers(body, secret=other))
    assert response.status_code == 400
    assert not Delivery.objects.exists()
    assert tasks.waiting() == 0
    assert "refused" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("offset", [-310, 310, -3600 * 24])  # whole seconds in the header: a margin
def test_it_refuses_a_timestamp_more_than_5_minutes_off(db, hook_client, offset):
    body = event()
    response = post(hook_client, body, signed_headers(body, at=time.time() + offset))
    assert response.status_code == 400
    assert not Delivery.objects.exists()


def test_it_takes_a_timestamp_within_5_minutes(db, hook_client):
    body = event()
    response = post(hook_client, body, signed_headers(body, at=time.time() - 240))
    assert response.status_code == 200


def test_it_refuses_a_body_over_64_kb_before_reading_it(db, hook_client):
    body = event(padding="x" * (64 * 1024))
    response = post(hook_client, body, signed_headers(body))
    assert response.status_code == 413
    assert not Delivery.objects.exists()


def test_it_refuses_a_signed_body_that_is_not_a_json_object(db, hook_client):
    body = b"[1, 2, 3]"
    response = post(hook_client, body, signed_headers(body))
    assert response.status_code == 400
    assert not Delivery.objects.exists()


def test_it_is_off_without_a_secret(db, hook_client, settings):
    settings.BATCHBOARD_WEBHOOK_SECRET = ""
    body = event()
    assert post(hook_client, body, signed_headers(body)).status_code == 404


def test_it_answers_only_posts(db, hook_client):
    assert hook_client.get(URL).status_code == 405


# --- Replays and unknown events -----------------------------------------------------


def test_it_answers_a_replay_with_200_and_does_not_process_it_again(db, hook_client, tasks):
    body = event()
    headers = signed_headers(body, webhook_id="wh_replayed")
    assert post(hook_client, body, headers).status_code == 200
    assert tasks.waiting() == 1
    response = post(hook_client, body, headers)
    assert response.status_code == 200
    assert "not processed again" in response.json()["message"]
    assert Delivery.objects.count() == 1
    assert tasks.waiting() == 1


def test_it_acknowledges_and_ignores_an_unknown_event_type(db, hook_client, tasks):
    body = event(event_type="response.completed")
    response = post(hook_client, body, signed_headers(body))
    assert response.status_code == 200
    assert Delivery.objects.get().state == "ignored"
    assert tasks.waiting() == 0


def test_it_ignores_a_batch_event_whose_batch_id_is_not_one(db, hook_client, tasks):
    body = event(batch_id="../../admin")
    response = post(hook_client, body, signed_headers(body))
    assert response.status_code == 200
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.batch_id) == ("ignored", "")
    assert tasks.waiting() == 0


# --- Processing: one retrieve, recorded like a pass ------------------------------


def test_a_delivery_fetches_the_batch_once_and_records_it(db, hook_client, tasks, api, fake_api):
    data = api.add("in_progress")
    data.update(status="completed", completed_at=int(time.time()), finalizing_at=int(time.time()) - 1)
    body = event(data["id"])
    assert post(hook_client, body, signed_headers(body, webhook_id="wh_a")).status_code == 200
    assert len(fake_api.requests_to("GET", f"/batches/{data['id']}")) == 0  # the view never calls upstream
    tasks.drain()
    assert len(fake_api.requests_to("GET", f"/batches/{data['id']}")) == 1
    assert Batch.objects.get(batch_id=data["id"]).status == "completed"
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.tries) == ("processed", 1)


def test_duplicated_deliveries_are_processed_once(db, hook_client, tasks, api, fake_api):
    data = api.add("in_progress")
    data.update(status="failed", failed_at=int(time.time()))
    body = event(data["id"], event_type="batch.failed")
    headers = signed_headers(body, webhook_id="wh_dup")
    for _ in range(3):
        assert post(hook_client, body, headers).status_code == 200
    tasks.drain()
    # The same delivery's task enqueued twice (a sweep, a second worker) finds nothing to claim.
    from webhooks.tasks import enqueue_processing

    enqueue_processing(Delivery.objects.get().pk)
    tasks.drain()
    assert len(fake_api.requests_to("GET", f"/batches/{data['id']}")) == 1
    assert Batch.objects.get(batch_id=data["id"]).status == "failed"


def test_a_delivery_for_a_batch_already_recorded_final_costs_no_call(db, hook_client, tasks, api, fake_api):
    data = api.add("completed")
    body = event(data["id"])
    post(hook_client, body, signed_headers(body))
    tasks.drain()
    assert fake_api.requests_to("GET", f"/batches/{data['id']}") == []
    assert Delivery.objects.get().state == "processed"


def test_a_delivery_for_a_batch_the_dashboard_never_saw_records_it(db, hook_client, tasks, api, fake_api):
    data = api.add("expired", record=False)
    body = event(data["id"], event_type="batch.expired")
    post(hook_client, body, signed_headers(body))
    tasks.drain()
    assert Batch.objects.get(batch_id=data["id"]).status == "expired"


def test_a_batch_the_api_does_not_know_fails_the_delivery_with_its_reason(db, hook_client, tasks, fake_api):
    body = event("batch_unknown1")
    post(hook_client, body, signed_headers(body))
    tasks.drain()
    delivery = Delivery.objects.get()
    assert delivery.state == "failed"
    assert "does not know" in delivery.error
    assert not Batch.objects.exists()


def test_an_upstream_failure_is_tried_again_later(db, hook_client, tasks, api, fake_api):
    from tests.fake_api import Reply

    data = api.add("in_progress")
    fake_api.route("GET", f"/batches/{data['id']}", lambda received: Reply(500, {"error": {"message": "boom"}}))
    body = event(data["id"])
    post(hook_client, body, signed_headers(body))
    tasks.drain()
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.tries) == ("received", 1)
    assert delivery.busy_until is not None
    assert delivery.error
    assert tasks.waiting() == 1  # the next try, due after its backoff


# --- Pages ----------------------------------------------------------------------------


def test_the_list_and_detail_pages_say_when_the_last_webhook_arrived(db, hook_client, viewer_client, api, synced):
    data = api.add("in_progress")
    assert "No webhook received yet" in viewer_client.get("/batches/").content.decode()
    body = event(data["id"])
    post(hook_client, body, signed_headers(body))
    for url in ("/batches/", f"/batches/{data['id']}/"):
        page = viewer_client.get(url).content.decode()
        assert "Last webhook received" in page


def test_the_pages_say_nothing_of_webhooks_when_the_receiver_is_off(db, viewer_client, api, settings, synced):
    settings.BATCHBOARD_WEBHOOK_SECRET = ""
    data = api.add("in_progress")
    for url in ("/batches/", f"/batches/{data['id']}/"):
        assert 'id="last-webhook"' not in viewer_client.get(url).content.decode()


# --- The secret's setting --------------------------------------------------------------


def test_the_secret_setting_takes_a_secret_or_the_name_of_a_variable_holding_one(monkeypatch):
    from dashboard.settings import _env_webhook_secret

    monkeypatch.setenv("BATCHBOARD_WEBHOOK_SECRET", SECRET)
    assert _env_webhook_secret("BATCHBOARD_WEBHOOK_SECRET") == SECRET
    monkeypatch.setenv("BATCHBOARD_WEBHOOK_SECRET", "OPENAI_WEBHOOK_SECRET")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    assert _env_webhook_secret("BATCHBOARD_WEBHOOK_SECRET") == SECRET
    monkeypatch.delenv("BATCHBOARD_WEBHOOK_SECRET")
    assert _env_webhook_secret("BATCHBOARD_WEBHOOK_SECRET") == ""


@pytest.mark.parametrize(
    ("value", "variable_value", "says"),
    [
        ("MISSING_VARIABLE", None, "MISSING_VARIABLE, which is not set"),
        ("whsec_not base64!", None, "whsec_ followed by base64"),
        ("whsec_", None, "whsec_ followed by base64"),
        ("HOLDER", "not-a-whsec-secret", "whsec_ followed by base64"),
        ("sk-live secret with spaces", None, "starting with whsec_"),
    ],
)
def test_the_secret_setting_refuses_a_malformed_value_without_echoing_it(monkeypatch, value, variable_value, says):
    from django.core.exceptions import ImproperlyConfigured

    from dashboard.settings import _env_webhook_secret

    monkeypatch.setenv("BATCHBOARD_WEBHOOK_SECRET", value)
    monkeypatch.delenv("MISSING_VARIABLE", raising=False)
    if variable_value is not None:
        monkeypatch.setenv("HOLDER", variable_value)
    with pytest.raises(ImproperlyConfigured, match=says) as refused:
        _env_webhook_secret("BATCHBOARD_WEBHOOK_SECRET")
    secrets_given = [variable_value] if variable_value else [] if value.isidentifier() else [value]
    assert not any(secret in str(refused.value) for secret in secrets_given)


def test_a_delivery_whose_task_was_lost_is_processed_with_the_next_one(db, hook_client, tasks, api, fake_api):
    from datetime import timedelta

    from django_tasks_db.models import DBTaskResult

    first, second = api.add("in_progress"), api.add("in_progress")
    body = event(first["id"])
    post(hook_client, body, signed_headers(body, webhook_id="wh_lost"))
    tasks.commit_callbacks()
    DBTaskResult.objects.all().delete()  # its task is lost
    Delivery.objects.update(received_at=Delivery.objects.get().received_at - timedelta(minutes=16))
    body = event(second["id"])
    post(hook_client, body, signed_headers(body, webhook_id="wh_next"))
    tasks.drain()
    assert set(Delivery.objects.values_list("state", flat=True)) == {"processed"}
    assert len(fake_api.requests_to("GET", f"/batches/{first['id']}")) == 1


def test_the_list_with_the_receiver_on_costs_no_query_more_whatever_the_deliveries(
    db, fresh_cache, hook_client, operator_client, django_assert_num_queries, settings
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from batches.models import record_batch
    from tests.conftest import observation

    for n in range(5):
        record_batch(observation(f"batch_w{n:04d}"))
    settings.BATCHBOARD_WEBHOOK_SECRET = ""
    operator_client.get("/batches/")  # the first view fills what later ones read from the cache
    with CaptureQueriesContext(connection) as off:
        operator_client.get("/batches/")
    queries_off = len(off)  # now: each request clears the connection's query log
    settings.BATCHBOARD_WEBHOOK_SECRET = SECRET
    for n in range(30):
        body = event(f"batch_w{n:04d}")
        post(hook_client, body, signed_headers(body, webhook_id=f"wh_{n}"))
    with django_assert_num_queries(queries_off):  # last_webhook_at is on the connection rows the page reads anyway
        assert "Last webhook received" in operator_client.get("/batches/").text


# --- Per connection -------------------------------------------------------------------

SECOND_SECRET = "whsec_" + base64.b64encode(b"the second connection's secret!!").decode()
SECOND_URL = "/webhooks/openai/second/"


def post_to(client, url: str, body: bytes, headers: dict):
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return client.post(url, data=body, content_type="application/json", **extra)


@pytest.fixture
def second(db, monkeypatch):
    """A second connection (from the connections file, say), open to every signed-in user, whose webhook secret is
    in the variable its definition names."""
    monkeypatch.setenv("SECOND_WEBHOOK_SECRET", SECOND_SECRET)
    monkeypatch.setenv("SECOND_API_KEY", "sk-second-never-called")
    return Connection.objects.create(
        name="Second",
        slug="second",
        source=ConnectionSource.FILE,
        base_url="http://127.0.0.1:9/v1",
        api_key_env="SECOND_API_KEY",
        webhook_secret_env="SECOND_WEBHOOK_SECRET",
        open_to_everyone=True,
    )


def test_each_connection_receives_at_its_own_url_verified_by_its_own_secret(db, hook_client, second, tasks):
    body = event("batch_second1")
    response = post_to(hook_client, SECOND_URL, body, signed_headers(body, webhook_id="wh_b", secret=SECOND_SECRET))
    assert response.status_code == 200
    delivery = Delivery.objects.get()
    assert (delivery.connection, delivery.batch_id) == (second, "batch_second1")
    body = event("batch_first1")
    assert post(hook_client, body, signed_headers(body, webhook_id="wh_a")).status_code == 200
    assert Delivery.objects.get(webhook_id="wh_a").connection == Connection.objects.default()
    assert tasks.waiting() == 2


def test_a_delivery_signed_with_one_connections_secret_is_refused_on_anothers_url(
    db, hook_client, second, tasks, caplog
):
    body = event("batch_cross1")
    signed_for_default = signed_headers(body, webhook_id="wh_cross")
    response = post_to(hook_client, SECOND_URL, body, signed_for_default)
    assert response.status_code == 400
    signed_for_second = signed_headers(body, webhook_id="wh_cross", secret=SECOND_SECRET)
    assert post(hook_client, body, signed_for_second).status_code == 400
    assert not Delivery.objects.exists()
    assert tasks.waiting() == 0
    counts = dict(Refusals.objects.values_list("connection__slug", "count"))
    assert counts == {"second": 1, Connection.objects.default().slug: 1}
    assert "for connection 'second' refused" in caplog.text
    assert SECOND_SECRET not in caplog.text and SECRET not in caplog.text


def test_a_secret_kept_encrypted_in_the_admin_verifies_its_connections_deliveries(db, hook_client, settings):
    from cryptography.fernet import Fernet

    from batches import secrets

    settings.BATCHBOARD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    Connection.objects.create(
        name="Admin-made",
        slug="admin-made",
        source=ConnectionSource.ADMIN,
        base_url="http://127.0.0.1:9/v1",
        api_key_encrypted=secrets.encrypt("sk-admin"),
        webhook_secret_encrypted=secrets.encrypt(SECOND_SECRET),
    )
    body = event()
    url = "/webhooks/openai/admin-made/"
    headers = signed_headers(body, webhook_id="wh_1", secret=SECOND_SECRET)
    assert post_to(hook_client, url, body, headers).status_code == 200
    assert post_to(hook_client, url, body, signed_headers(body, webhook_id="wh_2")).status_code == 400
    assert Delivery.objects.get().connection.slug == "admin-made"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"slug": "other"}, id="unknown-slug"),
        pytest.param({"paused": True}, id="paused"),
        pytest.param({"configured": False}, id="definition-gone"),
        pytest.param({"webhook_secret_env": ""}, id="no-secret"),
        pytest.param({"webhook_secret_env": "UNSET_WEBHOOK_SECRET"}, id="secret-variable-unset"),
    ],
)
def test_a_connection_that_does_not_receive_answers_404_and_processes_nothing(
    db, hook_client, second, tasks, change, monkeypatch
):
    monkeypatch.delenv("UNSET_WEBHOOK_SECRET", raising=False)
    Connection.objects.filter(pk=second.pk).update(**change)
    body = event()
    response = post_to(hook_client, SECOND_URL, body, signed_headers(body, secret=SECOND_SECRET))
    assert response.status_code == 404
    assert not Delivery.objects.exists()
    assert tasks.waiting() == 0
    assert not Refusals.objects.exists()


def test_the_default_connections_url_answers_404_when_it_is_paused(db, hook_client, tasks):
    Connection.objects.filter(pk=Connection.objects.default().pk).update(paused=True)
    body = event()
    assert post(hook_client, body, signed_headers(body)).status_code == 404
    assert not Delivery.objects.exists()


def test_a_delivery_whose_connection_was_paused_before_its_task_ran_is_not_fetched(db, hook_client, second, tasks):
    body = event("batch_paused1")
    post_to(hook_client, SECOND_URL, body, signed_headers(body, secret=SECOND_SECRET))
    Connection.objects.filter(pk=second.pk).update(paused=True)
    tasks.drain()
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.error) == ("failed", "Connection Second is paused; not fetched.")
    assert tasks.waiting() == 0


def test_a_webhook_id_is_unique_per_connection_not_across_connections(db, hook_client, second, tasks):
    """A gateway numbers its own deliveries: the same id from two connections is two deliveries; a replay within one
    connection is still recognised."""
    body = event("batch_same1")
    assert post(hook_client, body, signed_headers(body, webhook_id="msg_1")).status_code == 200
    second_headers = signed_headers(body, webhook_id="msg_1", secret=SECOND_SECRET)
    assert post_to(hook_client, SECOND_URL, body, second_headers).status_code == 200
    replay = post_to(hook_client, SECOND_URL, body, second_headers)
    assert (replay.status_code, "not processed again" in replay.json()["message"]) == (200, True)
    assert sorted(Delivery.objects.values_list("connection__slug", flat=True)) == ["default", "second"]
    assert tasks.waiting() == 2


def test_a_compatible_connection_takes_its_providers_batch_ids(db, hook_client, second, tasks):
    Connection.objects.filter(pk=second.pk).update(kind=ConnectionKind.COMPATIBLE)
    gateway_id = base64.urlsafe_b64encode(b"litellm_proxy;model_id:abc;llm_batch_id:batch_123" * 3).decode()
    body = event(gateway_id)
    assert post_to(hook_client, SECOND_URL, body, signed_headers(body, secret=SECOND_SECRET)).status_code == 200
    delivery = Delivery.objects.get()
    assert (delivery.batch_id, delivery.state) == (gateway_id, "received")
    # The default connection speaks OpenAI's ids only: the same event names no batch there.
    assert post(hook_client, body, signed_headers(body, webhook_id="wh_2")).status_code == 200
    assert Delivery.objects.get(webhook_id="wh_2").state == "ignored"


def test_a_verified_delivery_notes_the_connections_last_webhook_once_per_few_seconds(db, hook_client, second, tasks):
    from django.db import connection as database
    from django.test.utils import CaptureQueriesContext

    def updates(queries):
        return [q for q in queries if q["sql"].startswith("UPDATE") and "batches_connection" in q["sql"]]

    start = time.time()
    with time_machine.travel(start, tick=False):
        body = event()
        with CaptureQueriesContext(database) as burst:
            for n in range(5):
                headers = signed_headers(body, webhook_id=f"wh_{n}", secret=SECOND_SECRET)
                assert post_to(hook_client, SECOND_URL, body, headers).status_code == 200
    assert len(updates(burst.captured_queries)) == 1
    second.refresh_from_db()
    first_noted = second.last_webhook_at
    assert first_noted is not None
    assert Connection.objects.default().last_webhook_at is None  # only the connection that received it
    later = start + receiving.NOTE_EVERY.total_seconds() + 1
    with time_machine.travel(later, tick=False):
        headers = signed_headers(body, webhook_id="wh_later", secret=SECOND_SECRET)
        post_to(hook_client, SECOND_URL, body, headers)
    second.refresh_from_db()
    assert second.last_webhook_at > first_noted
    # A refused delivery is not a sign that the wiring works.
    headers = signed_headers(body, webhook_id="wh_forged")
    with time_machine.travel(later + 60, tick=False):
        assert post_to(hook_client, SECOND_URL, body, headers).status_code == 400
    assert Connection.objects.get(pk=second.pk).last_webhook_at == second.last_webhook_at


def test_the_list_says_when_each_connection_received_its_last_webhook(
    db, hook_client, viewer_client, second, synced, django_user_model
):
    body = event()
    post_to(hook_client, SECOND_URL, body, signed_headers(body, secret=SECOND_SECRET))
    page = viewer_client.get("/batches/").content.decode()
    assert "Second: Last webhook received" in page
    assert "default: No webhook received yet" in page
    assert "<code>/webhooks/openai/</code>" in page


def test_the_list_names_only_the_receivers_of_connections_the_viewer_sees(db, client, second, synced, settings):
    from django.contrib.auth.models import Group, User

    team = Group.objects.create(name="team-second")
    Connection.objects.filter(pk=second.pk).update(open_to_everyone=False)
    second.view_teams.add(team)
    Connection.objects.filter(pk=Connection.objects.default().pk).update(open_to_everyone=False)
    member = User.objects.create_user("member", password="pw")
    member.groups.add(team)
    client.force_login(member)
    page = client.get("/batches/").content.decode()
    assert "/webhooks/openai/second/" in page
    assert "/webhooks/openai/</code>" not in page
    assert "Second:" not in page  # one connection shown: its line needs no name


def test_the_list_says_nothing_of_webhooks_when_no_connection_has_a_secret(
    db, viewer_client, second, settings, synced, monkeypatch
):
    settings.BATCHBOARD_WEBHOOK_SECRET = ""
    monkeypatch.delenv("SECOND_WEBHOOK_SECRET")
    assert 'id="last-webhook"' not in viewer_client.get("/batches/").content.decode()


def test_the_detail_page_says_when_its_own_connection_received_its_last_webhook(
    db, hook_client, viewer_client, second, synced
):
    from batches.models import record_batch
    from tests.conftest import observation

    record_batch(observation("batch_inb0001"), connection=second)
    body = event("batch_inb0001")
    post(hook_client, body, signed_headers(body))  # the default connection's, not this batch's
    page = viewer_client.get("/batches/batch_inb0001/").content.decode()
    assert "No webhook received yet" in page and "/webhooks/openai/second/" in page
    post_to(hook_client, SECOND_URL, body, signed_headers(body, webhook_id="wh_b", secret=SECOND_SECRET))
    page = viewer_client.get("/batches/batch_inb0001/").content.decode()
    assert "Last webhook received" in page and "Second:" not in page


def test_the_list_with_two_receivers_costs_no_query_more(
    db, fresh_cache, hook_client, operator_client, second, settings, monkeypatch
):
    from django.db import connection as database
    from django.test.utils import CaptureQueriesContext

    operator_client.get("/batches/")
    with CaptureQueriesContext(database) as on:
        assert "No webhook received yet" in operator_client.get("/batches/").text
    settings.BATCHBOARD_WEBHOOK_SECRET = ""
    monkeypatch.delenv("SECOND_WEBHOOK_SECRET")
    with CaptureQueriesContext(database) as off:
        assert 'id="last-webhook"' not in operator_client.get("/batches/").text
    assert len(on) == len(off)


# --- Processing in the connection that received it (the live sandbox's two organisations) ---------------------


@pytest.fixture
def sandbox_second(sandbox_url, monkeypatch):
    """A connection to the sandbox's second organisation (key sk-sandbox-second), receiving webhooks at
    /webhooks/openai/sandbox-second/."""
    from django.conf import settings as django_settings

    monkeypatch.setenv("SANDBOX_SECOND_KEY", django_settings.SANDBOX_SECOND_API_KEY)
    monkeypatch.setenv("SECOND_WEBHOOK_SECRET", SECOND_SECRET)
    return Connection.objects.create(
        name="Sandbox, second organisation",
        slug="sandbox-second",
        source=ConnectionSource.FILE,
        base_url=sandbox_url,
        api_key_env="SANDBOX_SECOND_KEY",
        webhook_secret_env="SECOND_WEBHOOK_SECRET",
        open_to_everyone=True,
    )


def _finished_in_second_organisation(sandbox_second, sandbox_clock) -> str:
    """A batch of the sandbox's second organisation, created over HTTP with its key and run to its end."""
    import requests

    api, key = sandbox_second.base_url, {"Authorization": "Bearer sk-sandbox-second"}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    files = {"file": ("in.jsonl", json.dumps(line).encode() + b"\n")}
    upload = requests.post(f"{api}/files", headers=key, files=files, data={"purpose": "batch"}, timeout=30).json()
    created = requests.post(
        f"{api}/batches",
        headers=key,
        json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        timeout=30,
    ).json()
    for _ in range(500):
        status = requests.get(f"{api}/batches/{created['id']}", headers=key, timeout=30).json()["status"]
        if status == "completed":
            return created["id"]
        sandbox_clock.advance(60)
    pytest.fail(f"the sandbox's batch is still {status}")


def test_a_delivery_is_fetched_with_its_own_connections_key_and_recorded_there(
    sandbox_url, sandbox_second, sandbox_clock, tasks
):
    from batches.models import record_batch
    from tests.conftest import observation

    batch_id = _finished_in_second_organisation(sandbox_second, sandbox_clock)
    # The same id recorded final in the default connection (possible with gateways) is no reason to skip the fetch.
    record_batch(observation(batch_id, "completed", processed=1, total=1))
    client = Client(enforce_csrf_checks=True)
    body = event(batch_id)
    url = "/webhooks/openai/sandbox-second/"
    assert post_to(client, url, body, signed_headers(body, secret=SECOND_SECRET)).status_code == 200
    tasks.drain()
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.error, delivery.tries) == ("processed", "", 1)
    recorded = Batch.objects.get(connection=sandbox_second, batch_id=batch_id)
    assert (recorded.status, recorded.total_requests, bool(recorded.output_file_id)) == ("completed", 1, True)


def test_a_batch_of_the_second_organisation_posted_to_the_default_url_is_not_found_with_the_first_key(
    sandbox_url, sandbox_second, sandbox_clock, tasks
):
    batch_id = _finished_in_second_organisation(sandbox_second, sandbox_clock)
    body = event(batch_id)
    assert post(Client(), body, signed_headers(body)).status_code == 200
    tasks.drain()
    delivery = Delivery.objects.get()
    assert (delivery.connection.slug, delivery.state) == ("default", "failed")
    assert "does not know" in delivery.error
    assert not Batch.objects.filter(batch_id=batch_id).exists()


# --- Existing rows and the admin ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_deliveries_to_the_default_connection():
    from django.db import connection as database
    from django.db.migrations.executor import MigrationExecutor

    before = [("webhooks", "0001_webhooks")]
    executor = MigrationExecutor(database)
    executor.migrate(before)
    OldDelivery = executor.loader.project_state(before).apps.get_model("webhooks", "Delivery")
    OldDelivery.objects.create(webhook_id="wh_old", event_type="batch.completed", batch_id="batch_old1")

    executor = MigrationExecutor(database)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    delivery = Delivery.objects.get(webhook_id="wh_old")
    assert delivery.connection == Connection.objects.default()


def test_the_admin_lists_deliveries_with_their_connection(db, admin_client, hook_client, second):
    body = event()
    post_to(hook_client, SECOND_URL, body, signed_headers(body, secret=SECOND_SECRET))
    page = admin_client.get("/admin/webhooks/delivery/")
    assert page.status_code == 200
    assert "Second" in page.text
    assert admin_client.get(f"/admin/webhooks/delivery/?connection__id__exact={second.pk}").status_code == 200


def test_refusals_are_in_metrics_per_connection_whose_url_was_posted_to(db, hook_client, second, settings):
    from prometheus_client.parser import text_string_to_metric_families

    body = event("batch_metric1")
    unsigned = {"webhook-id": "wh_forged", "webhook-timestamp": str(int(time.time()))}
    for _ in range(3):
        assert post_to(hook_client, SECOND_URL, body, unsigned).status_code == 400
    assert post(hook_client, body, unsigned).status_code == 400
    assert post_to(hook_client, SECOND_URL, body, signed_headers(body, secret=SECOND_SECRET)).status_code == 200

    settings.BATCHBOARD_METRICS_TOKEN = "metrics-token-for-webhook-tests"
    scraped = Client().get("/metrics", headers={"Authorization": "Bearer metrics-token-for-webhook-tests"})
    refusals = {
        sample.labels["connection"]: sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "batchboard_webhook_refusals_total"
    }
    assert refusals == {"second": 3, Connection.objects.default().slug: 1}
