"""The sandbox sends webhooks the way the API does (REFERENCE §12): signed with Standard Webhooks, one event per batch
that turned final, retried on non-2xx answers, duplicated or delayed under its fault settings; and its webhooks
drive the dashboard's receiver end to end."""

from __future__ import annotations

import base64
import json

import pytest
from standardwebhooks.webhooks import Webhook

from batches.models import Batch
from sandbox import clock, webhooks
from sandbox.models import SandboxBatch, SandboxWebhook
from sandbox.simulation import state_at, timeline
from tests.conftest import create_batches
from tests.fake_api import FakeApi, Reply

SECRET = "whsec_" + base64.b64encode(b"sandbox webhook test secret 32b!").decode()


@pytest.fixture
def receiver(settings):
    """A tiny local HTTP server that stands for the webhook's receiver: it answers 200 unless a test scripts else."""
    with FakeApi() as server:
        server.script("POST", "/hook", Reply(200, {"ok": True}))
        settings.SANDBOX_WEBHOOK_URL = f"http://127.0.0.1:{server.port}/hook"
        settings.SANDBOX_WEBHOOK_SECRET = SECRET
        settings.SANDBOX_WEBHOOK_DUPLICATE_RATE = 0.0
        settings.SANDBOX_WEBHOOK_MAX_DELAY = 0.0
        webhooks.fault_draws.seed(0)
        yield server


def finish(batch_id: str) -> None:
    """Move the sandbox's clock just past the moment the batch turns final."""
    plan = SandboxBatch.objects.get(pk=batch_id).plan
    transitions, _ = timeline(plan)
    final_at = plan.created + transitions[-1][0] / plan.speed
    clock.advance(max(final_at - clock.now(), 0) + 0.5)
    assert state_at(plan, clock.now()).is_terminal


def posts(receiver: FakeApi):
    return receiver.requests_to("POST", "/hook")


def test_it_signs_and_posts_the_event_once_when_a_batch_completes(sandbox_url, receiver):
    [batch] = create_batches(1)
    assert webhooks.dispatch() == 0
    assert posts(receiver) == []
    finish(batch.id)
    assert webhooks.dispatch() == 1
    [post] = posts(receiver)
    assert Webhook(SECRET).verify(post.body, post.headers) is not None  # the library's own check, as a receiver
    event = json.loads(post.body)
    assert set(event) == {"id", "object", "created_at", "type", "data"}
    assert event["id"].startswith("evt_") and event["object"] == "event"
    assert (event["type"], event["data"]) == ("batch.completed", {"id": batch.id})
    assert isinstance(event["created_at"], int)
    assert post.headers["webhook-id"].startswith("wh_")
    assert post.headers["webhook-signature"].startswith("v1,")
    assert post.headers["content-type"] == "application/json"
    clock.advance(60)
    assert webhooks.dispatch() == 0
    assert len(posts(receiver)) == 1


def test_it_refuses_to_verify_with_another_secret(sandbox_url, receiver):
    [batch] = create_batches(1)
    finish(batch.id)
    webhooks.dispatch()
    [post] = posts(receiver)
    other = Webhook("whsec_" + base64.b64encode(b"another secret of thirty-two b!!").decode())
    with pytest.raises(Exception, match="signature"):
        other.verify(post.body, post.headers)


def test_a_cancelled_batch_sends_batch_cancelled(sandbox_url, receiver):
    from batches import services

    [batch] = create_batches(1)
    services.get_client().cancel_batch(batch.id)
    finish(batch.id)
    webhooks.dispatch()
    [post] = posts(receiver)
    assert json.loads(post.body)["type"] == "batch.cancelled"


def test_it_retries_a_non_2xx_answer_with_backoff_under_the_same_webhook_id(sandbox_url, receiver):
    receiver.script("POST", "/hook", Reply(500, {}), Reply(503, {}), Reply(200, {}))
    [batch] = create_batches(1)
    finish(batch.id)
    assert webhooks.dispatch() == 1
    assert webhooks.dispatch() == 0  # not due before its backoff
    clock.advance(1.3)
    assert webhooks.dispatch() == 1
    clock.advance(1.0)
    assert webhooks.dispatch() == 0  # the second wait is longer
    clock.advance(1.5)
    assert webhooks.dispatch() == 1
    sent = posts(receiver)
    assert len(sent) == 3
    assert len({post.headers["webhook-id"] for post in sent}) == 1
    row = SandboxWebhook.objects.get()
    assert (row.attempts, row.last_status, row.delivered_at is not None) == (3, 200, True)


def test_it_gives_up_after_its_attempts(sandbox_url, receiver):
    receiver.script("POST", "/hook", Reply(500, {}))
    [batch] = create_batches(1)
    finish(batch.id)
    for _ in range(webhooks.MAX_ATTEMPTS + 2):
        webhooks.dispatch()
        clock.advance(webhooks.BACKOFF_MAX_SECONDS * 1.3)
    assert len(posts(receiver)) == webhooks.MAX_ATTEMPTS
    assert SandboxWebhook.objects.get().gave_up


def test_it_duplicates_deliveries_under_the_fault_rate(sandbox_url, receiver, settings):
    settings.SANDBOX_WEBHOOK_DUPLICATE_RATE = 1.0
    [batch] = create_batches(1)
    finish(batch.id)
    webhooks.dispatch()
    sent = posts(receiver)
    assert len(sent) == 2
    assert sent[0].headers["webhook-id"] == sent[1].headers["webhook-id"]
    assert sent[0].body == sent[1].body


def test_it_holds_deliveries_back_under_the_delay_fault(sandbox_url, receiver, settings):
    settings.SANDBOX_WEBHOOK_MAX_DELAY = 30.0
    [batch] = create_batches(1)
    finish(batch.id)
    webhooks.dispatch()
    held = SandboxWebhook.objects.get()
    assert held.next_attempt_at > clock.now()
    assert posts(receiver) == []
    clock.advance(31)
    assert webhooks.dispatch() == 1


def test_a_batch_final_long_before_the_sender_noticed_gets_no_event(sandbox_url, receiver):
    [batch] = create_batches(1)
    finish(batch.id)
    clock.advance(webhooks.NOTICE_WINDOW_SECONDS + 60)
    assert webhooks.dispatch() == 0
    assert posts(receiver) == []
    assert SandboxBatch.objects.get(pk=batch.id).webhook_due_at is None


def test_nothing_is_sent_without_a_url(sandbox_url, receiver, settings):
    settings.SANDBOX_WEBHOOK_URL = ""
    [batch] = create_batches(1)
    finish(batch.id)
    assert webhooks.dispatch() == 0


def test_the_sandbox_webhook_updates_the_dashboard_once_under_duplicates(sandbox_url, live_server, settings, tasks):
    """End to end: the sandbox's webhook reaches the dashboard's receiver (the same live server), and the task it
    enqueues records the batch final, with one retrieve however many copies arrive."""
    settings.SANDBOX_WEBHOOK_URL = f"{live_server.url}/webhooks/openai/"
    settings.SANDBOX_WEBHOOK_SECRET = settings.BATCHBOARD_WEBHOOK_SECRET = SECRET
    settings.SANDBOX_WEBHOOK_DUPLICATE_RATE = 1.0
    [batch] = create_batches(1)
    from batches import lookups

    lookups.refresh_batch(batch.id)
    assert Batch.objects.get(batch_id=batch.id).status != "completed"
    finish(batch.id)
    webhooks.dispatch()
    assert SandboxWebhook.objects.get().sent == 2
    from webhooks.models import Delivery

    delivery = Delivery.objects.get()  # the second copy was a replay
    tasks.drain()
    delivery.refresh_from_db()
    assert (delivery.state, delivery.tries) == ("processed", 1)
    assert Batch.objects.get(batch_id=batch.id).status == "completed"


@pytest.mark.once
def test_make_run_wires_the_sandbox_webhooks_to_its_own_receiver(database_url, processes):
    """`manage.py serve` in sandbox mode: a batch created behind the dashboard's back shows final by the sandbox's
    webhook alone (the sync loop's idle pass is an hour away), with a secret generated for the run."""
    import sys
    import time

    import requests

    from batches.freshness import LIST_STATE
    from batches.models import SyncState
    from tests.conftest import free_port, process_environment, wait_until_serving
    from webhooks.models import Delivery

    port = free_port()
    environment = process_environment(
        database_url, SANDBOX_SPEED="100000", BATCHBOARD_HISTORY_INTERVAL="3600", BATCHBOARD_ARCHIVE="off"
    )
    serve = processes.start("serve", [sys.executable, "manage.py", "serve", "--port", str(port)], environment)
    wait_until_serving(f"http://127.0.0.1:{port}/healthz")
    deadline = time.monotonic() + 60
    while not SyncState.objects.filter(name=LIST_STATE, succeeded_at__isnull=False).exists():
        assert time.monotonic() < deadline and serve.poll() is None, processes.output(serve)
        time.sleep(0.1)  # the loop's first pass is done: the next is an hour away
    api = f"http://127.0.0.1:{port}/sandbox/v1"
    auth = {"Authorization": "Bearer sk-sandbox"}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    line["body"]["messages"] = [{"role": "user", "content": "hi"}]
    upload = requests.post(
        f"{api}/files",
        headers=auth,
        files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")},
        data={"purpose": "batch"},
        timeout=10,
    ).json()
    created = requests.post(
        f"{api}/batches",
        headers=auth,
        json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        timeout=10,
    ).json()
    deadline = time.monotonic() + 60
    while not Delivery.objects.filter(batch_id=created["id"], state="processed").exists():
        assert time.monotonic() < deadline and serve.poll() is None, processes.output(serve)
        time.sleep(0.1)
    assert Batch.objects.get(batch_id=created["id"]).status == "completed"
    delivery = Delivery.objects.get(batch_id=created["id"])
    assert delivery.event_type == "batch.completed"
    assert delivery.error == ""  # the webhook's task fetched it, not found it recorded already


# --- Per organisation ------------------------------------------------------------------

SECOND_SECRET = "whsec_" + base64.b64encode(b"the second organisation's secret").decode()


@pytest.fixture
def second_receiver(receiver, settings):
    """The second organisation's receiver: another path of the same tiny server, with its own secret."""
    receiver.script("POST", "/second-hook", Reply(200, {"ok": True}))
    settings.SANDBOX_SECOND_WEBHOOK_URL = f"http://127.0.0.1:{receiver.port}/second-hook"
    settings.SANDBOX_SECOND_WEBHOOK_SECRET = SECOND_SECRET
    return receiver


def second_organisation_batch(sandbox_url: str) -> str:
    """A batch created over HTTP with the second organisation's key."""
    import requests

    key = {"Authorization": "Bearer sk-sandbox-second"}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    files = {"file": ("in.jsonl", json.dumps(line).encode() + b"\n")}
    upload = requests.post(f"{sandbox_url}/files", headers=key, files=files, data={"purpose": "batch"}, timeout=30)
    created = requests.post(
        f"{sandbox_url}/batches",
        headers=key,
        json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    return created.json()["id"]


def test_each_organisation_sends_to_its_own_url_signed_with_its_own_secret(sandbox_url, second_receiver):
    [first] = create_batches(1)
    second = second_organisation_batch(sandbox_url)
    finish(first.id)
    finish(second)
    assert webhooks.dispatch() == 2
    [to_first] = posts(second_receiver)
    [to_second] = second_receiver.requests_to("POST", "/second-hook")
    assert json.loads(to_first.body)["data"] == {"id": first.id}
    assert json.loads(to_second.body)["data"] == {"id": second}
    assert Webhook(SECRET).verify(to_first.body, to_first.headers) is not None
    assert Webhook(SECOND_SECRET).verify(to_second.body, to_second.headers) is not None
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(to_second.body, to_second.headers)
    assert dict(SandboxWebhook.objects.values_list("batch_id", "organisation")) == {
        first.id: "org-sandbox",
        second: "org-sandbox-second",
    }


def test_an_organisation_without_a_url_sends_nothing_while_the_other_sends(sandbox_url, second_receiver, settings):
    settings.SANDBOX_WEBHOOK_URL = ""
    [first] = create_batches(1)
    second = second_organisation_batch(sandbox_url)
    finish(first.id)
    finish(second)
    assert webhooks.enabled()
    assert webhooks.dispatch() == 1
    assert posts(second_receiver) == []
    [sent] = second_receiver.requests_to("POST", "/second-hook")
    assert json.loads(sent.body)["data"] == {"id": second}
    # The first organisation's batch gets no event later either (as one final before the sender noticed).
    assert SandboxBatch.objects.get(pk=first.id).webhook_due_at is None
    assert not SandboxWebhook.objects.filter(batch_id=first.id).exists()


def test_the_second_organisations_webhook_updates_its_own_connection_on_the_dashboard(
    sandbox_url, live_server, settings, tasks, monkeypatch
):
    """End to end: the second organisation's webhook reaches its connection's receiver on the dashboard, which
    fetches the batch with that connection's key (the first organisation's cannot see it) and records it there."""
    from batches.models import Connection, ConnectionSource
    from webhooks.models import Delivery

    monkeypatch.setenv("SANDBOX_SECOND_KEY", settings.SANDBOX_SECOND_API_KEY)
    monkeypatch.setenv("SANDBOX_SECOND_WEBHOOK_SECRET_VALUE", SECOND_SECRET)
    connection = Connection.objects.create(
        name="Second organisation",
        slug="second-org",
        source=ConnectionSource.FILE,
        base_url=sandbox_url,
        api_key_env="SANDBOX_SECOND_KEY",
        webhook_secret_env="SANDBOX_SECOND_WEBHOOK_SECRET_VALUE",
    )
    settings.SANDBOX_WEBHOOK_URL = ""
    settings.SANDBOX_SECOND_WEBHOOK_URL = f"{live_server.url}/webhooks/openai/second-org/"
    settings.SANDBOX_SECOND_WEBHOOK_SECRET = SECOND_SECRET
    batch_id = second_organisation_batch(sandbox_url)
    finish(batch_id)
    assert webhooks.dispatch() == 1
    assert SandboxWebhook.objects.get().last_status == 200
    delivery = Delivery.objects.get()
    assert delivery.connection == connection
    tasks.drain()
    delivery.refresh_from_db()
    assert (delivery.state, delivery.error, delivery.tries) == ("processed", "", 1)
    assert Batch.objects.get(connection=connection, batch_id=batch_id).status == "completed"
    assert not Batch.objects.filter(connection=Connection.objects.default()).exists()
    connection.refresh_from_db()
    assert connection.last_webhook_at is not None


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_webhooks_their_batchs_organisation():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("sandbox", "0004_organisations_long_ids")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    OldBatch, OldWebhook = (
        old_apps.get_model("sandbox", "SandboxBatch"),
        old_apps.get_model("sandbox", "SandboxWebhook"),
    )
    OldBatch.objects.create(
        id="batch_second", organisation="org-sandbox-second", endpoint="/v1/chat/completions", input_file_id="file-x",
        created=1.0, created_at=1, speed=1.0, validate_s=1.0, run_s=1.0, finalize_s=1.0, drain_s=1.0,
    )  # fmt: skip
    for batch_id in ("batch_second", "batch_gone"):
        OldWebhook.objects.create(
            batch_id=batch_id, type="batch.completed", webhook_id=f"wh_{batch_id}", body="{}", next_attempt_at=1.0
        )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert dict(SandboxWebhook.objects.values_list("batch_id", "organisation")) == {
        "batch_second": "org-sandbox-second",
        "batch_gone": "org-sandbox",
    }
