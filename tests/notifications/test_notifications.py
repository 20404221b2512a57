"""Notifications: a final batch reaches a local receiver (json:// through apprise, or a signed webhook) once per
event however many paths record it; a failing destination is retried, then paused; destination secrets never show in
pages, logs or the audit log; subscriptions follow what the destination's owner (a user or a team) may see; the
periodic checks (stuck, expiring soon, budgets) notify once."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Group, Permission
from django.db import close_old_connections
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from audit.models import AuditEvent
from batches import services
from batches.models import Batch, Connection, DailySpend, record_batch, record_batches
from notifications import checks, fanout
from notifications.models import Attempt, Destination, Kind, Notification, Scope, State, Subscription
from tests.conftest import CREATED, completed, observation

pytestmark = pytest.mark.django_db

TOKEN = "team-token-9f8e7d6c"


def destination(*, user=None, team=None, kind=Kind.APPRISE, target="", name="on-call") -> Destination:
    made = Destination(user=user, team=team, kind=kind, name=name)
    made.set_target(target)
    made.save()
    return made


def subscribe(to: Destination, scope=Scope.CONNECTION, connection=None, **fields) -> Subscription:
    if scope == Scope.CONNECTION and connection is None:
        connection = Connection.objects.default()
    return Subscription.objects.create(destination=to, scope=scope, connection=connection, **fields)


def finish(batch_id="batch_n1", **fields) -> Batch:
    record_batch(observation(batch_id))
    return record_batch(completed(batch_id, **fields))


def pending_now():
    """Let a notification waiting for its retry come due, as the queue's advance() does for its task."""
    Notification.objects.filter(state=State.PENDING).update(busy_until=timezone.now() - timedelta(seconds=1))


# --- Once per event ------------------------------------------------------------------


def test_it_notifies_a_json_receiver_once_when_the_same_final_state_is_recorded_twice(tasks, viewer, receiver):
    subscribe(destination(user=viewer, target=receiver.json_url))

    finish()
    record_batch(completed("batch_n1"))  # the webhook's task records what the loop already did
    record_batches([completed("batch_n1")])
    tasks.drain()

    assert len(receiver.received) == 1
    message = receiver.received[0].json
    assert message["title"] == "batchboard: batch_n1 completed"
    assert "Description: nightly eval" in message["message"]
    assert "Connection: default" in message["message"]
    assert "Requests: 10 total, 10 completed, 0 failed" in message["message"]
    assert "https://batchboard.example.com/batches/batch_n1/" in message["message"]
    assert receiver.received[0].path == "/hooks/team-token-9f8e7d6c"
    assert Notification.objects.get().state == State.SENT
    assert Attempt.objects.get().ok


def test_a_second_path_fanning_out_the_same_event_sends_nothing_more(tasks, viewer, receiver):
    subscribe(destination(user=viewer, target=receiver.json_url))
    batch = finish()
    tasks.drain()

    assert fanout.notify_batch(batch, fanout.finished_events(batch)) == 0  # a duplicated delivery's fan-out
    tasks.drain()

    assert len(receiver.received) == 1
    assert Notification.objects.count() == 1


def test_a_duplicated_task_sends_once(tasks, viewer, receiver):
    from notifications.tasks import enqueue_sends, send_waiting

    batch = finish()
    tasks.drain()
    made = destination(user=viewer, target=receiver.json_url)
    subscribe(made)
    assert fanout.notify_batch(batch, fanout.finished_events(batch)) == 1
    tasks.commit_callbacks()
    assert enqueue_sends([made.pk]) == 0  # one send task per destination is queued already
    for _ in range(3):  # and duplicates of it, as a lost-task check racing a worker would queue
        send_waiting.enqueue(made.pk)
    tasks.drain()

    assert len(receiver.received) == 1


def test_a_send_queued_by_the_previous_version_is_sent_by_its_destinations_loop(tasks, viewer, receiver):
    from django_tasks_db.models import DBTaskResult

    from notifications.tasks import deliver

    batch = finish()
    tasks.drain()
    subscribe(destination(user=viewer, target=receiver.json_url))
    fanout.notify_batch(batch, fanout.finished_events(batch))
    tasks.commit_callbacks()
    DBTaskResult.objects.filter(task_path="notifications.tasks.send_waiting").delete()
    Destination.objects.update(send_due_at=None)
    deliver.enqueue(Notification.objects.get().pk)  # one task per notification, as queued before the upgrade
    tasks.drain()

    assert len(receiver.received) == 1 and Notification.objects.get().state == State.SENT


def test_an_imported_old_batch_notifies_nobody(tasks, viewer, receiver):
    subscribe(destination(user=viewer, target=receiver.json_url))
    record_batches([completed("batch_old")], historical=True)
    tasks.drain()

    assert receiver.received == [] and not Notification.objects.exists()


def test_each_final_status_is_selectable(tasks, viewer, receiver):
    subscribe(destination(user=viewer, target=receiver.json_url), on_completed=False, on_cancelled=True)
    finish("batch_done")
    record_batch(observation("batch_stop", "cancelled", cancelled_at=CREATED + 9))
    tasks.drain()

    assert [received.json["title"] for received in receiver.received] == ["batchboard: batch_stop cancelled"]


def test_a_completed_batch_above_the_failure_threshold_says_so_in_one_message(tasks, viewer, receiver):
    counts = {"total": 10, "completed": 7, "failed": 3}
    subscribe(destination(user=viewer, target=receiver.json_url), failure_percent=20)
    subscribe(destination(user=viewer, target=receiver.json_url, name="lenient"), failure_percent=50)
    finish(request_counts=counts)
    tasks.drain()

    titles = sorted(received.json["title"] for received in receiver.received)
    assert titles == [
        "batchboard: batch_n1 completed",
        "batchboard: batch_n1 completed with 3 of 10 requests failed",
    ]


@pytest.mark.postgresql
def test_the_loop_and_a_webhook_recording_the_same_moment_notify_once(transactional_db, viewer, receiver):
    """Two threads record the batch's final state at once (as the sync loop and a webhook's task would), on real
    concurrent transactions; the tasks then run: one notification."""
    from tests.conftest import TaskQueue

    subscribe(destination(user=viewer, target=receiver.json_url))
    record_batch(observation("batch_race"))
    barrier = threading.Barrier(2)

    def record():
        try:
            barrier.wait()
            record_batch(completed("batch_race"))
        finally:
            close_old_connections()

    threads = [threading.Thread(target=record) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    TaskQueue().drain()

    assert len(receiver.received) == 1
    assert Notification.objects.count() == 1


# --- Failing destinations ---------------------------------------------------------------


def test_a_failing_destination_is_retried_then_paused_with_a_banner(tasks, client, viewer, receiver):
    receiver.status = 500
    failing = destination(user=viewer, target=receiver.json_url)
    subscribe(failing)
    finish()
    tasks.drain()
    assert len(receiver.received) == 1 and Notification.objects.get().state == State.PENDING

    for _ in range(3):
        tasks.advance(7200)
        pending_now()
        tasks.drain()

    assert len(receiver.received) == 3  # BATCHBOARD_NOTIFY_PAUSE_AFTER: then paused, no more tries
    failing.refresh_from_db()
    assert failing.paused_at is not None and failing.consecutive_failures == 3
    assert Notification.objects.get().state == State.FAILED
    assert [attempt.ok for attempt in Attempt.objects.all()] == [False, False, False]

    finish("batch_later")  # a paused destination hears nothing more: the event is held for its resumption
    tasks.drain()
    assert len(receiver.received) == 3
    assert Notification.objects.get(batch__batch_id="batch_later").state == State.HELD

    client.force_login(viewer)
    page = client.get("/notifications/").content.decode()
    assert f'id="paused-{failing.pk}"' in page and "is paused after 3 failed deliveries" in page

    client.post(f"/notifications/destinations/{failing.pk}/resume/")
    failing.refresh_from_db()
    assert failing.paused_at is None and failing.consecutive_failures == 0


def test_a_destination_that_recovers_is_sent_on_its_next_try(tasks, viewer, receiver):
    receiver.status = 503
    subscribe(destination(user=viewer, target=receiver.json_url))
    finish()
    tasks.drain()
    receiver.status = 200
    tasks.advance(7200)
    pending_now()
    tasks.drain()

    assert len(receiver.received) == 2
    assert Notification.objects.get().state == State.SENT
    assert Destination.objects.get().consecutive_failures == 0


# --- Signed webhooks ------------------------------------------------------------------


def test_a_signed_webhook_destination_shows_its_secret_once_and_its_deliveries_verify(tasks, client, viewer, receiver):
    client.force_login(viewer)
    response = client.post(
        "/notifications/destinations/add/",
        {"name": "ops system", "kind": Kind.SIGNED_WEBHOOK, "target": receiver.http_url, "owner": "me"},
    )
    page = response.content.decode()
    made = Destination.objects.get()
    secret = made.webhook_secret
    assert secret.startswith("whsec_") and secret in page
    assert secret not in client.get("/notifications/").content.decode()  # once
    assert secret not in made.secret_encrypted

    subscribe(made)
    finish()
    tasks.drain()

    (delivery,) = receiver.received
    verified = Webhook(secret).verify(delivery.body, delivery.headers)
    assert verified["type"] == "batchboard.finished:completed"
    assert verified["data"]["id"] == "batch_n1"
    assert verified["data"]["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    with pytest.raises(Exception):  # noqa: B017 (the library's own verification error)
        Webhook(secret).verify(delivery.body.replace(b"batch_n1", b"batch_n2"), delivery.headers)


def test_send_a_test_reaches_the_destination(tasks, client, viewer, receiver):
    made = destination(user=viewer, target=receiver.json_url)
    client.force_login(viewer)
    client.post(f"/notifications/destinations/{made.pk}/test/")
    tasks.drain()

    assert [received.json["title"] for received in receiver.received] == ["batchboard: test notification"]
    assert "sent" in client.get("/notifications/").content.decode()


# --- Secrets -----------------------------------------------------------------------


def test_destination_secrets_never_appear_in_pages_logs_or_the_audit_log(tasks, client, viewer, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.status = 500
    client.force_login(viewer)
    client.post(
        "/notifications/destinations/add/",
        {"name": "slack-ish", "kind": Kind.APPRISE, "target": receiver.json_url, "owner": "me"},
    )
    made = Destination.objects.get()
    assert TOKEN not in made.target_encrypted and made.shown == "json://127.0.0.1"
    subscribe(made)
    finish()
    tasks.drain()
    client.post(f"/notifications/destinations/{made.pk}/test/")
    tasks.drain()

    page = client.get("/notifications/").content.decode()
    assert "json://127.0.0.1" in page and "failed:" in page
    assert TOKEN not in page
    assert TOKEN not in caplog.text
    assert all(TOKEN not in attempt.error for attempt in Attempt.objects.all())
    assert all(TOKEN not in f"{event.detail} {event.target}" for event in AuditEvent.objects.all())
    assert TOKEN not in made.__class__.objects.get().last_error


def test_without_an_encryption_key_a_destination_is_refused_with_a_clear_message(client, viewer, settings):
    settings.BATCHBOARD_ENCRYPTION_KEY = ""
    client.force_login(viewer)
    response = client.post(
        "/notifications/destinations/add/",
        {"name": "x", "kind": Kind.APPRISE, "target": "json://127.0.0.1:9/x", "owner": "me"},
    )
    assert response.status_code == 400
    assert "BATCHBOARD_ENCRYPTION_KEY" in response.content.decode()
    assert not Destination.objects.exists()


@pytest.mark.parametrize(
    ("kind", "target", "says"),
    [
        (Kind.EMAIL, "not-an-address", "Enter an email address"),
        (Kind.SIGNED_WEBHOOK, "ftp://example.com/", "http(s)://"),
        (Kind.APPRISE, "nosuchscheme://x", "apprise does not recognise"),
        (Kind.APPRISE, "json://" + "a" * 3000, "at most 2000"),
    ],
)
def test_a_bad_destination_is_refused_and_changes_nothing(client, viewer, kind, target, says):
    client.force_login(viewer)
    response = client.post(
        "/notifications/destinations/add/", {"name": "x", "kind": kind, "target": target, "owner": "me"}
    )
    assert response.status_code == 400 and says in response.content.decode()
    assert not Destination.objects.exists()


# --- Teams and access --------------------------------------------------------------


@pytest.fixture
def research(db):
    team = Group.objects.create(name="research")
    connection = Connection.objects.create(name="Research", slug="research", base_url="http://127.0.0.1:9/v1")
    connection.view_teams.add(team)
    return connection, team


def test_subscriptions_fire_only_for_batches_the_owner_may_see(tasks, django_user_model, research, receiver):
    connection, team = research
    outsider = django_user_model.objects.create_user("outsider", password="pw-outsider-1")
    member = django_user_model.objects.create_user("member", password="pw-member-1")
    member.groups.add(team)
    finance = Group.objects.create(name="finance")
    everything = {"scope": Scope.FILTER}  # every batch of every connection
    subscribe(destination(user=outsider, target=receiver.json_url, name="outsider"), **everything)
    subscribe(destination(user=member, target=receiver.json_url, name="member"), **everything)
    subscribe(destination(team=team, target=receiver.json_url, name="research team"), **everything)
    subscribe(destination(team=finance, target=receiver.json_url, name="finance team"), **everything)

    record_batch(completed("batch_secret"), connection=connection)
    tasks.drain()

    notified = sorted(Notification.objects.values_list("destination__name", flat=True))
    assert notified == ["member", "research team"]
    assert len(receiver.received) == 2


def test_a_team_administrator_manages_the_teams_destinations_and_others_do_not(client, django_user_model, research):
    _connection, team = research
    admin = django_user_model.objects.create_user("lead", password="pw-lead-1")
    admin.groups.add(team)
    admin.user_permissions.add(Permission.objects.get(codename="manage_team"))
    member = django_user_model.objects.create_user("member", password="pw-member-1")
    member.groups.add(team)
    form = {"name": "research alerts", "kind": Kind.APPRISE, "target": "json://127.0.0.1:9/x", "owner": str(team.pk)}

    client.force_login(member)
    assert client.post("/notifications/destinations/add/", form).status_code == 400  # not a choice for them
    client.force_login(admin)
    assert client.post("/notifications/destinations/add/", form).status_code == 302
    client.get("/notifications/")  # reads the "Added" message
    made = Destination.objects.get()
    assert made.team == team and made.user is None

    client.force_login(member)
    assert "research alerts" not in client.get("/notifications/").content.decode()
    assert client.post(f"/notifications/destinations/{made.pk}/delete/").status_code == 404
    assert Destination.objects.filter(pk=made.pk).exists()


def test_the_watch_button_subscribes_to_the_batch_or_its_job(client, viewer, research):
    connection, _team = research
    mine = destination(user=viewer, target="json://127.0.0.1:9/x")
    batch = finish()
    hidden = record_batch(completed("batch_hidden"), connection=connection)
    client.force_login(viewer)

    page = client.get("/batches/batch_n1/").content.decode()
    assert f'action="/notifications/watch/{batch.pk}/"' in page

    response = client.post(f"/notifications/watch/{batch.pk}/", {"destination": mine.pk, "what": "batch"})
    assert response.status_code == 302 and response["Location"] == "/batches/batch_n1/"
    client.post(f"/notifications/watch/{batch.pk}/", {"destination": mine.pk, "what": "job"})
    client.post(f"/notifications/watch/{batch.pk}/", {"destination": mine.pk, "what": "batch"})  # already
    scopes = sorted(Subscription.objects.values_list("scope", "job"))
    assert scopes == [(Scope.BATCH, ""), (Scope.JOB, "batch_n1")]
    assert "Watched by on-call" in client.get("/batches/batch_n1/").content.decode()

    assert client.post(f"/notifications/watch/{hidden.pk}/", {"destination": mine.pk}).status_code == 404


def test_a_subscription_form_refuses_a_batch_the_user_may_not_see(client, viewer, research):
    connection, _team = research
    mine = destination(user=viewer, target="json://127.0.0.1:9/x")
    record_batch(completed("batch_hidden"), connection=connection)
    client.force_login(viewer)
    response = client.post(
        "/notifications/subscriptions/add/",
        {"destination": mine.pk, "scope": Scope.BATCH, "batch_id": "batch_hidden", "failure_percent": 5},
    )
    assert response.status_code == 400 and "no such batch among those you may see" in response.content.decode()
    assert not Subscription.objects.exists()


def test_a_subscription_form_adds_a_saved_filter(tasks, client, viewer, receiver):
    mine = destination(user=viewer, target=receiver.json_url)
    client.force_login(viewer)
    response = client.post(
        "/notifications/subscriptions/add/",
        {
            "destination": mine.pk,
            "scope": Scope.FILTER,
            "metadata": "description:nightly eval",
            "endpoint": "/v1/chat/completions",
            "on_completed": "on",
            "failure_percent": 5,
        },
    )
    assert response.status_code == 302
    subscription = Subscription.objects.get()
    assert (subscription.metadata_key, subscription.metadata_value) == ("description", "nightly eval")

    finish("batch_match")
    finish("batch_other", metadata={"description": "weekly"})
    tasks.drain()
    assert [received.json["title"] for received in receiver.received] == ["batchboard: batch_match completed"]


# --- Periodic checks -------------------------------------------------------------------


def test_a_stuck_batch_and_one_expiring_soon_are_notified_once(tasks, viewer, receiver):
    subscribe(destination(user=viewer, target=receiver.json_url), on_completed=False)
    now = int(timezone.now().timestamp())
    soon, later = now + 3600, now + 20 * 3600
    record_batch(observation("batch_stuck", "validating", expires_at=later))  # created long ago: past STUCK_AFTER
    record_batch(observation("batch_soon", created_at=now - 60, in_progress_at=now - 50, expires_at=soon))

    assert checks.check_all() == 2
    tasks.drain()
    assert checks.check_all() == 0  # already fanned out: nothing scheduled again
    tasks.drain()

    titles = sorted(received.json["title"] for received in receiver.received)
    assert titles == ["batchboard: batch_soon expiring soon", "batchboard: batch_stuck stuck in validating"]


def test_a_monthly_budget_past_80_percent_is_notified_once_a_month(tasks, viewer, receiver):
    connection = Connection.objects.default()
    Connection.objects.filter(pk=connection.pk).update(monthly_budget=Decimal("1.00"))
    subscribe(destination(user=viewer, target=receiver.json_url), on_budget=True)
    DailySpend.objects.create(
        connection=connection, day=DailySpend.day_of(), model="gpt-4o", batches=1, input_tokens=700_000, output_tokens=0
    )

    checks.check_all()
    checks.check_all()
    tasks.drain()

    assert len(receiver.received) == 1
    assert "monthly budget at" in receiver.received[0].json["title"]


# --- A job's final results -----------------------------------------------------------------


def test_a_jobs_final_results_are_announced_once_when_no_automatic_retry_follows(tasks, viewer, receiver, tmp_path):
    from tests.conftest import kept_batch

    subscribe(
        destination(user=viewer, target=receiver.json_url), on_completed=False, on_failures=False, on_job_complete=True
    )
    parent = kept_batch({"req-1": "ok", "req-2": 500}, tmp_path, metadata={"description": "nightly eval"})
    tasks.drain()

    (message,) = [received.json for received in receiver.received]
    assert message["title"] == f"batchboard: job {parent.batch_id} final results complete"
    assert "Lines: 2, 1 succeeded, 1 still failing" in message["message"]
    assert "answer to req-1" not in message["message"]  # never an answer
    assert f"https://batchboard.example.com/batches/{parent.batch_id}/final/" in message["message"]


def test_a_job_waits_for_its_automatic_retry_and_is_announced_when_the_retry_is_kept(tasks, viewer, receiver, tmp_path):
    from batches.models import Reaction, ReactionState
    from retries import auto
    from retries.models import AutoRetry, AutoRetryState
    from tests.conftest import kept_batch, kept_retry

    subscribe(
        destination(user=viewer, target=receiver.json_url), on_completed=False, on_failures=False, on_job_complete=True
    )
    parent = kept_batch({"req-1": "ok", "req-2": 500}, tmp_path, metadata={"batchboard_auto_retry": "1"})
    tasks.commit_callbacks()
    # The retries app decided, as its worker would, that a retry is on its way (sending it needs the upstream).
    Reaction.objects.filter(batch=parent, step=auto.STEP).update(state=ReactionState.DONE)
    AutoRetry.objects.create(parent=parent, state=AutoRetryState.SUBMITTED, retry_batch_id="batch_retry")
    tasks.drain()
    assert receiver.received == []  # not complete: a retry follows

    kept_retry(parent, {"req-2": "ok"}, tmp_path, attempt=1)
    tasks.drain()

    (message,) = [received.json for received in receiver.received]
    assert message["title"] == f"batchboard: job {parent.batch_id} final results complete"
    assert "Lines: 2, 2 succeeded, 0 still failing" in message["message"]


def test_the_sync_loops_housekeeping_enqueues_the_checks_at_most_once_a_minute(tasks):
    from batches import events

    events.housekeeping.send_robust(sender=None)
    events.housekeeping.send_robust(sender=None)  # a second loop process, the same minute

    assert tasks.waiting() == 1
    tasks.drain()


def test_the_admin_shows_destinations_without_their_url(admin_client, viewer):
    made = destination(user=viewer, target=f"json://127.0.0.1:9/{TOKEN}")
    subscribe(made)
    pages = [
        admin_client.get("/admin/notifications/destination/").content.decode(),
        admin_client.get(f"/admin/notifications/destination/{made.pk}/change/").content.decode(),
    ]
    assert all("json://127.0.0.1" in page and TOKEN not in page for page in pages)


def test_a_destination_whose_url_cannot_be_decrypted_fails_with_its_reason(tasks, viewer, receiver, settings):
    subscribe(destination(user=viewer, target=receiver.json_url))
    settings.BATCHBOARD_ENCRYPTION_KEY = Fernet.generate_key().decode()  # the key was changed without rotating
    finish()
    tasks.drain()

    (attempt,) = Attempt.objects.all()
    assert not attempt.ok and "cannot be read" in attempt.error
    assert receiver.received == []


def _signed_delivery(client, batch_id: str, webhook_id: str, secret: str):
    import json
    import time as clock
    from datetime import UTC, datetime

    body = json.dumps(
        {
            "id": f"evt_{webhook_id}",
            "object": "event",
            "type": "batch.completed",
            "created_at": int(clock.time()),
            "data": {"id": batch_id},
        }
    ).encode()
    moment = datetime.now(tz=UTC)
    headers = {
        "HTTP_WEBHOOK_ID": webhook_id,
        "HTTP_WEBHOOK_TIMESTAMP": str(int(moment.timestamp())),
        "HTTP_WEBHOOK_SIGNATURE": Webhook(secret).sign(webhook_id, moment, body),
    }
    return client.post("/webhooks/openai/", data=body, content_type="application/json", **headers)


def test_webhooks_delivered_twice_reordered_and_late_and_the_loop_seeing_it_too_notify_once(
    tasks, viewer, receiver, api, settings
):
    from django.test import Client

    from batches import lookups

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    settings.BATCHBOARD_WEBHOOK_SECRET = secret
    subscribe(destination(user=viewer, target=receiver.json_url))
    data = api.add("in_progress")
    data.update(
        status="completed",
        completed_at=int(timezone.now().timestamp()),
        request_counts={"total": 10, "completed": 10, "failed": 0},
    )
    hooks = Client(enforce_csrf_checks=True)

    for webhook_id in ("wh_1", "wh_1", "wh_2"):  # a replay, and the same event delivered again under a new id
        assert _signed_delivery(hooks, data["id"], webhook_id, secret).status_code == 200
    tasks.drain()  # the first delivery's task retrieves and records it final
    assert Batch.objects.get(batch_id=data["id"]).status == "completed"
    record_batches([services.ApiBatch.from_api(data)])  # the loop's pass sees the same change
    lookups.refresh_batch(data["id"])  # and a page
    record_batch(observation(data["id"]))  # an older state arriving late changes nothing
    tasks.drain()
    assert _signed_delivery(hooks, data["id"], "wh_3", secret).status_code == 200  # a delayed delivery
    tasks.drain()

    assert [received.json["title"] for received in receiver.received] == [f"batchboard: {data['id']} completed"]
    assert Notification.objects.count() == 1


def test_a_send_whose_task_was_lost_is_enqueued_again_by_the_next_check(tasks, viewer, receiver):
    from django_tasks_db.models import DBTaskResult

    from notifications.tasks import check_conditions

    subscribe(destination(user=viewer, target=receiver.json_url))
    finish()
    tasks.commit_callbacks()
    tasks.drain()
    assert len(receiver.received) == 1
    lost = Notification.objects.create(
        destination=Destination.objects.get(), batch=Batch.objects.get(), event="stuck:validating"
    )
    Notification.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=20))
    DBTaskResult.objects.all().delete()  # no task waits for it

    check_conditions.enqueue()
    tasks.drain()

    assert len(receiver.received) == 2
    assert Notification.objects.get(pk=lost.pk).state == State.SENT


# --- Digests ----------------------------------------------------------------------------


def test_a_digest_destination_gets_one_message_per_window_listing_each_event(tasks, viewer, receiver):
    gathered = destination(user=viewer, target=receiver.json_url)
    Destination.objects.filter(pk=gathered.pk).update(digest_minutes=10)
    subscribe(gathered)
    finish("batch_d1")
    finish("batch_d2")
    tasks.drain()
    assert receiver.received == []
    assert set(Notification.objects.values_list("state", flat=True)) == {State.DIGEST}

    tasks.advance(600)
    Destination.objects.update(digest_due_at=timezone.now())  # the window has passed
    tasks.drain()

    (message,) = [received.json for received in receiver.received]
    assert message["title"] == "batchboard: 2 notifications"
    assert "- batch_d1 completed (default): https://batchboard.example.com/batches/batch_d1/" in message["message"]
    assert "- batch_d2 completed" in message["message"]
    assert set(Notification.objects.values_list("state", flat=True)) == {State.SENT}
    assert Attempt.objects.filter(ok=True).count() == 2
    assert Destination.objects.get().digest_due_at is None

    finish("batch_d3")  # a new window starts with the next event
    tasks.drain()
    assert Destination.objects.get().digest_due_at > timezone.now()
    assert len(receiver.received) == 1


def test_a_failing_digest_is_retried_and_counts_once_toward_pausing(tasks, viewer, receiver):
    receiver.status = 500
    gathered = destination(user=viewer, target=receiver.json_url)
    Destination.objects.filter(pk=gathered.pk).update(digest_minutes=1)
    subscribe(gathered)
    finish("batch_d1")
    finish("batch_d2")
    tasks.drain()
    Destination.objects.update(digest_due_at=timezone.now())
    tasks.advance(120)
    tasks.drain()

    assert len(receiver.received) == 1
    assert Destination.objects.get().consecutive_failures == 1
    assert Attempt.objects.filter(ok=False).count() == 2
    receiver.status = 200
    Destination.objects.update(digest_due_at=timezone.now())
    tasks.advance(7200)
    tasks.drain()

    assert len(receiver.received) == 2
    assert set(Notification.objects.values_list("state", flat=True)) == {State.SENT}


# --- Paused destinations: events held, one summary on resuming -------------------------------------------------------


def paused(target: str, user) -> Destination:
    made = destination(user=user, target=target)
    Destination.objects.filter(pk=made.pk).update(paused_at=timezone.now(), consecutive_failures=3)
    subscribe(made)
    return made


def test_a_paused_destinations_events_are_held_and_logged_then_resuming_sends_the_recent_ones_as_one_summary(
    tasks, client, viewer, receiver, settings, caplog
):
    caplog.set_level(logging.DEBUG)
    settings.BATCHBOARD_NOTIFY_HELD_HOURS = 24
    made = paused(receiver.json_url, viewer)
    finish("batch_old")
    finish("batch_new")
    tasks.drain()

    assert receiver.received == []
    assert set(Notification.objects.values_list("state", flat=True)) == {State.HELD}
    assert [attempt.outcome for attempt in Attempt.objects.all()] == ["held: the destination is paused"] * 2
    client.force_login(viewer)
    page = client.get("/notifications/").content.decode()
    assert "2 notifications held meanwhile" in page and "held: the destination is paused" in page
    Notification.objects.filter(batch__batch_id="batch_old").update(created_at=timezone.now() - timedelta(hours=30))

    response = client.post(f"/notifications/destinations/{made.pk}/resume/", follow=True)
    said = response.content.decode()
    assert "What it missed while paused (1) goes out as one summary" in said
    assert "1 held for longer than 24 h was not sent" in said
    client.post(f"/notifications/destinations/{made.pk}/resume/")  # pressed twice: resumed once
    tasks.drain()

    (summary,) = [received.json for received in receiver.received]
    assert summary["title"] == "batchboard: 1 notification held while paused"
    assert "- batch_new completed (default): https://batchboard.example.com/batches/batch_new/" in summary["message"]
    assert "batch_old" not in summary["message"]
    states = dict(Notification.objects.values_list("batch__batch_id", "state"))
    assert states == {"batch_old": State.SKIPPED, "batch_new": State.SENT}
    page = client.get("/notifications/").content.decode()
    assert "sent in a summary" in page
    assert '<a href="/batches/batch_new/">batch_new</a>: completed' in page  # the log links to the batch's page
    assert "not sent: held while the destination was paused, more than 24 h before it was resumed" in page
    made.refresh_from_db()
    assert made.paused_at is None and made.consecutive_failures == 0

    finish("batch_after")  # resumed: one message per event again
    tasks.drain()
    assert receiver.received[-1].json["title"] == "batchboard: batch_after completed"
    assert TOKEN not in page and TOKEN not in caplog.text
    assert all(TOKEN not in f"{event.detail} {event.target}" for event in AuditEvent.objects.all())


def test_a_failing_summary_is_retried_without_the_url_in_the_log(tasks, client, viewer, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    made = paused(receiver.json_url, viewer)
    finish("batch_h1")
    tasks.drain()
    receiver.status = 500
    client.force_login(viewer)
    client.post(f"/notifications/destinations/{made.pk}/resume/")
    tasks.drain()

    assert len(receiver.received) == 1 and Notification.objects.get().state == State.DIGEST
    failed = Attempt.objects.get(ok=False, step="summary")
    assert "500" in failed.error and TOKEN not in failed.error
    receiver.status = 200
    Destination.objects.update(digest_due_at=timezone.now())
    tasks.advance(7200)
    tasks.drain()

    assert len(receiver.received) == 2 and Notification.objects.get().state == State.SENT
    page = client.get("/notifications/").content.decode()
    assert "sent in a summary" in page and TOKEN not in page and TOKEN not in caplog.text


def test_send_a_test_still_goes_to_a_paused_destination(tasks, client, viewer, receiver):
    made = paused(receiver.json_url, viewer)
    client.force_login(viewer)
    client.post(f"/notifications/destinations/{made.pk}/test/")
    tasks.drain()

    assert [received.json["title"] for received in receiver.received] == ["batchboard: test notification"]
    assert Destination.objects.get().paused_at is not None  # a test does not resume it


def test_held_hours_zero_sends_nothing_of_what_was_held(tasks, client, viewer, receiver, settings):
    settings.BATCHBOARD_NOTIFY_HELD_HOURS = 0
    made = paused(receiver.json_url, viewer)
    finish()
    tasks.drain()
    client.force_login(viewer)
    client.post(f"/notifications/destinations/{made.pk}/resume/")
    tasks.drain()

    assert receiver.received == []
    assert Notification.objects.get().state == State.SKIPPED


def test_a_burst_to_one_destination_is_one_send_task_sending_each_once(tasks, viewer, receiver):
    from django_tasks_db.models import DBTaskResult

    subscribe(destination(user=viewer, target=receiver.json_url))
    record_batches([observation(f"batch_b{number}") for number in range(60)])
    record_batches([completed(f"batch_b{number}") for number in range(60)])
    record_batches([completed(f"batch_b{number}") for number in range(60)])  # seen twice
    tasks.drain()

    assert len(receiver.received) == 60
    assert len({received.json["title"] for received in receiver.received}) == 60
    assert DBTaskResult.objects.filter(task_path="notifications.tasks.send_waiting").count() == 1


def test_under_make_run_an_email_destination_prints_on_the_terminal_and_links_name_the_port(
    database_url, processes, viewer, receiver, settings
):
    """`manage.py serve` (make run) on the sandbox, on a port of its own, with no mail server and no
    BATCHBOARD_BASE_URL: an email destination (the one a new user can try without any service) is printed on the
    server's output and logged as sent, and every link names the server's port, not the default 8000."""
    import sys
    import time

    from tests.conftest import free_port, process_environment, wait_until_serving

    subscribe(destination(user=viewer, target=receiver.json_url))
    subscribe(destination(user=viewer, kind=Kind.EMAIL, target="me@example.com", name="my inbox"))
    port = free_port()
    environment = process_environment(
        database_url, BATCHBOARD_ENCRYPTION_KEY=settings.BATCHBOARD_ENCRYPTION_KEY, BATCHBOARD_ARCHIVE="off"
    )
    for name in ("BATCHBOARD_BASE_URL", "EMAIL_HOST"):
        environment.pop(name, None)
    serve = processes.start("serve", [sys.executable, "manage.py", "serve", "--port", str(port)], environment)
    wait_until_serving(f"http://127.0.0.1:{port}/healthz")

    finish()  # committed: the server's task worker fans it out and sends it
    deadline = time.monotonic() + 60
    while Notification.objects.filter(state=State.SENT).count() < 2:
        assert time.monotonic() < deadline and serve.poll() is None, processes.output(serve)
        time.sleep(0.1)

    (message,) = [received.json for received in receiver.received]
    link = f"http://127.0.0.1:{port}/batches/batch_n1/"
    assert link in message["message"]
    printed = processes.output(serve)
    assert "Subject: batchboard: batch_n1 completed" in printed and "To: me@example.com" in printed
    assert link in printed
    assert Attempt.objects.filter(ok=True).count() == 2


def test_an_event_held_just_as_its_destination_was_resumed_is_sent_by_the_next_check(tasks, viewer, receiver):
    from notifications.tasks import check_conditions

    made = destination(user=viewer, target=receiver.json_url)
    subscribe(made)
    batch = finish()
    tasks.drain()
    # A fan-out that read the destination paused, inserting after the resumption had released what was held.
    late = Notification.objects.create(destination=made, batch=batch, event="stuck:validating", state=State.HELD)
    Notification.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(minutes=20))

    check_conditions.enqueue()
    tasks.drain()

    assert Notification.objects.get(pk=late.pk).state == State.SENT
    assert [received.json["title"] for received in receiver.received][-1] == "batchboard: batch_n1 stuck in validating"
