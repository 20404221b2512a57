"""Three connections at once, end to end through the live sandbox (issue 19, items 1 and 7).

A is an OpenAI connection of the sandbox's first organisation (`Bearer sk-sandbox` at /sandbox/v1). B is an Azure
connection of the second organisation (`api-key: sk-sandbox-second` at /sandbox/openai/v1). C is a compatible
connection to the second organisation too, as through a gateway (`Bearer sk-sandbox-second` at /sandbox/v1), whose
new objects get LiteLLM-like ids: ~200 characters of base64url with `=` padding. B and C see the same organisation,
so an OpenAI-shaped batch of it is one row in each (ids are unique per connection), while C's gateway ids are of no
shape B accepts. Every call goes over real HTTP; the keys are in environment variables the connections name.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import F, Sum
from django.urls import reverse

from audit.models import AuditEvent
from batches import services, sync
from batches.lineage_keys import LineageState
from batches.models import Batch, Connection, ConnectionKind, ConnectionSource, SyncState, UpstreamMinute
from results.models import ResultArchive
from retries.models import AutoRetry, AutoRetryState
from sandbox import organisations
from sandbox.models import SandboxBatch
from tests.conftest import TaskQueue

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"
DAY = 86_400
GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{150,}={0,2}")


def _line(custom_id: str) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {custom_id}."}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def _content(count: int, prefix: str = "r") -> bytes:
    return "".join(json.dumps(_line(f"{prefix}{n}")) + "\n" for n in range(count)).encode()


@pytest.fixture
def server(sandbox_url):
    return sandbox_url.removesuffix("/sandbox/v1")


@pytest.fixture
def team(django_user_model):
    return Group.objects.create(name="batch-operators")


def _connection(slug: str, kind: str, base_url: str, key_env: str, team: Group) -> Connection:
    connection = Connection.objects.create(
        name=slug.upper(), slug=slug, kind=kind, base_url=base_url, api_key_env=key_env, source=ConnectionSource.ADMIN
    )
    for granted in (connection.view_teams, connection.cancel_teams, connection.create_teams):
        granted.add(team)
    return connection


@pytest.fixture
def three(server, monkeypatch, settings, team):
    """A, B and C, their keys in environment variables; the default connection paused (it is the sandbox too)."""
    monkeypatch.setenv("E2E_FIRST_KEY", settings.SANDBOX_API_KEY)
    monkeypatch.setenv("E2E_SECOND_KEY", settings.SANDBOX_SECOND_API_KEY)
    settings.SANDBOX_ID_STYLE = settings.SANDBOX_SECOND_ID_STYLE = "openai"
    Connection.objects.filter(pk=Connection.objects.default().pk).update(paused=True)
    return {
        "a": _connection("a", ConnectionKind.OPENAI, f"{server}/sandbox/v1", "E2E_FIRST_KEY", team),
        "b": _connection("b", ConnectionKind.AZURE, f"{server}/sandbox/openai/v1", "E2E_SECOND_KEY", team),
        "c": _connection("c", ConnectionKind.COMPATIBLE, f"{server}/sandbox/v1", "E2E_SECOND_KEY", team),
    }


@pytest.fixture
def member(client, django_user_model, team):
    """A signed-in user whose team may view, cancel and create on A, B and C (and sees nothing of the default)."""
    user = django_user_model.objects.create_user(username="member", password="pw-member")
    user.groups.add(team)
    client.force_login(user)
    return client


def _made_upstream(connection: Connection, prefix: str, count: int = 3, metadata: dict | None = None) -> str:
    """A batch made through the connection's own client (its URL, its key, its auth style): its id."""
    client = services.get_client(connection=connection)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{prefix}.jsonl"
        path.write_bytes(_content(count, prefix))
        uploaded = client.upload_file(path)
    return client.create_batch(input_file_id=uploaded.id, endpoint=CHAT, metadata=metadata).id


def _finished(batch_id: str) -> None:
    """The sandbox's batch is days old: it has finished by now."""
    SandboxBatch.objects.filter(pk=batch_id).update(created=F("created") - 10 * DAY)


def _ids(connection: Connection) -> set[str]:
    return set(Batch.objects.filter(connection=connection).values_list("batch_id", flat=True))


# --- Sync: each connection its own organisation, auth style, ids and budget ----------------------------------------


def test_it_syncs_each_connection_with_its_own_key_auth_style_and_ids(three, settings):
    a, b, c = three["a"], three["b"], three["c"]
    first = _made_upstream(a, "a")
    second = _made_upstream(b, "b")
    settings.SANDBOX_SECOND_ID_STYLE = "gateway"  # from now on the second organisation answers as the gateway does
    gateway = _made_upstream(c, "c")
    assert GATEWAY_ID.fullmatch(gateway) and len(gateway) > 150
    assert SandboxBatch.objects.get(pk=gateway).organisation == organisations.SECOND

    for connection in (a, b, c):
        outcome = sync.run_pass(connection=connection, force=True)
        assert outcome.ran and not outcome.error, (connection.slug, outcome.error)

    assert _ids(a) == {first}  # only its organisation's
    assert _ids(b) == {second}  # an Azure connection takes no id of a gateway's shape
    assert _ids(c) == {second, gateway}  # the same organisation seen through the gateway: both, as rows of C
    recorded = Batch.objects.get(connection=c, batch_id=gateway)
    assert recorded.input_file_id.startswith(organisations.GATEWAY_FILE_ID_PREFIX)

    # Each connection spent its own budget: rows of its own, and nothing on the paused default connection.
    minutes = UpstreamMinute.objects.values("connection").annotate(spent=Sum("calls"))
    spent = {row["connection"]: row["spent"] for row in minutes}
    assert set(spent) >= {a.pk, b.pk, c.pk} and all(spent[x.pk] > 0 for x in (a, b, c))
    assert Connection.objects.default().pk not in spent


def test_the_sandbox_refuses_a_connection_that_sends_its_key_in_the_wrong_header(three, server, team):
    """The Azure kind sends `api-key`, which the OpenAI path does not read: the pass fails and records nothing."""
    _made_upstream(three["a"], "a")
    wrong = _connection("wrong", ConnectionKind.AZURE, f"{server}/sandbox/v1", "E2E_FIRST_KEY", team)
    outcome = sync.run_pass(connection=wrong, force=True)
    assert outcome.ran and "API key" in outcome.error
    assert _ids(wrong) == set()
    assert "sk-sandbox" not in outcome.error


def test_one_connections_429_pauses_only_that_connection(three, settings):
    a, c = three["a"], three["c"]
    _made_upstream(a, "a")
    _made_upstream(c, "c")
    settings.OPENAI_MAX_RETRIES = 0
    settings.SANDBOX_RATE_LIMIT_RATE = 1.0
    settings.SANDBOX_RETRY_AFTER = 60.0
    limited = sync.run_pass(connection=a, force=True)
    assert limited.ran and limited.error
    paused = UpstreamMinute.objects.get(connection=a, minute=0).paused_until
    assert paused is not None

    settings.SANDBOX_RATE_LIMIT_RATE = 0.0
    other = sync.run_pass(connection=c, force=True)
    assert other.ran and not other.error and len(_ids(c)) == 1  # C is not paused by A's 429
    assert not UpstreamMinute.objects.filter(connection=c, paused_until__isnull=False).exists()
    again = sync.run_pass(connection=a, force=True)
    assert again.result.stopped == "budget" and _ids(a) == set()  # A waits as the API asked


# --- Pages: create and cancel on B, a gateway batch of C, an id in two connections ---------------------------------


def test_it_creates_a_batch_on_the_chosen_connection_and_cancels_it_there(three, member, settings):
    settings.SANDBOX_SPEED = 1.0  # real time: the batch still runs when the cancel arrives
    b = three["b"]
    form = member.get(reverse("batches:create")).content.decode()
    assert all(f'value="{three[slug].pk}"' in form for slug in "abc")
    response = member.post(
        reverse("batches:create"),
        {
            "token": str(uuid.uuid4()),
            "connection": str(b.pk),
            "endpoint": "",
            "completion_window": "24h",
            "output_expiry_unit": "days",
            "input_file_id": "",
            "input_file": SimpleUploadedFile("requests.jsonl", _content(2), content_type="application/jsonl"),
        },
    )
    assert response.status_code == 303, response.content.decode()[:2000]
    created = Batch.objects.get()
    assert created.connection == b
    assert SandboxBatch.objects.get(pk=created.batch_id).organisation == organisations.SECOND
    assert response["Location"] == reverse("batches:detail", args=[created.batch_id]) + "?connection=b"

    cancelled = member.post(reverse("batches:cancel", args=[created.batch_id]))
    assert cancelled.status_code in (302, 303)
    assert services.get_client(connection=b).retrieve_batch(created.batch_id).status in ("cancelling", "cancelled")
    assert Batch.objects.get(pk=created.pk).status in ("cancelling", "cancelled")
    assert not Batch.objects.filter(connection__in=[three["a"], three["c"]]).exists()


def test_a_gateway_batch_has_its_pages_files_and_a_linked_retry_on_its_connection(three, member, settings):
    c = three["c"]
    settings.SANDBOX_SECOND_ID_STYLE = "gateway"
    batch_id = _made_upstream(c, "g", count=4, metadata={"sandbox_scenario": "all_fail"})
    assert GATEWAY_ID.fullmatch(batch_id)
    _finished(batch_id)
    tasks = TaskQueue()

    # Not synced yet: of the viewer's three connections only C takes an id of this shape, so C is asked.
    detail = member.get(reverse("batches:detail", args=[batch_id]))
    assert detail.status_code == 200
    assert f"/batches/{batch_id}/" == reverse("batches:detail", args=[batch_id])  # the long id is the path
    batch = Batch.objects.get(batch_id=batch_id)
    assert batch.connection == c and batch.is_terminal and batch.failed_requests == 4
    tasks.drain()  # its results are kept by a task worker
    archive = ResultArchive.objects.get(batch=batch)
    assert archive.is_ready, archive.problem
    assert archive.input_file_id == batch.input_file_id and len(archive.input_file_id) > 128

    results = member.get(reverse("results:list", args=[batch_id]))
    assert results.status_code == 200 and "g0" in results.content.decode()
    assert member.get(reverse("results:request", args=[batch_id, 1])).status_code == 200
    for kind in ("input", "error"):
        kept = member.get(reverse("results:file", args=[batch_id, kind]))
        assert kept.status_code == 200, kind
        assert b"g0" in b"".join(kept.streaming_content if kept.streaming else [kept.content])
        upstream = member.get(reverse("batches:file", args=[batch_id, kind]))
        assert upstream.status_code == 200, kind
        assert b"g0" in b"".join(upstream.streaming_content if upstream.streaming else [upstream.content])

    retry_url = reverse("retries:confirm", args=[batch_id])
    assert member.get(retry_url + "?select=failed").status_code == 200
    made = member.post(retry_url, {"token": str(uuid.uuid4()), "select": "failed", "completion_window": "24h"})
    assert made.status_code == 303, made.content.decode()[:2000]
    retry = Batch.objects.exclude(pk=batch.pk).get()
    assert AuditEvent.objects.filter(action="create", outcome="ok", batch_id=retry.batch_id).exists()
    assert made["Location"] == reverse("batches:detail", args=[retry.batch_id])
    assert retry.connection == c and GATEWAY_ID.fullmatch(retry.batch_id)
    assert SandboxBatch.objects.get(pk=retry.batch_id).organisation == organisations.SECOND
    assert (retry.retry_of, retry.job, retry.attempt) == (batch_id, batch_id, 1)
    assert retry.lineage_state == LineageState.VERIFIED
    parent_page = member.get(reverse("batches:detail", args=[batch_id])).content.decode()
    assert "Retried by" in parent_page and retry.batch_id in parent_page

    # The list links the job by its long id, and its job filter takes it.
    job_url = reverse("batches:list") + "?job=" + quote(batch_id, safe="")
    assert f'href="{job_url}"' in member.get(reverse("batches:list")).content.decode()
    listed = member.get(job_url).content.decode()
    assert 'id="job-notice"' in listed and "is not a batch id" not in listed and retry.batch_id in listed


def test_an_id_in_two_connections_leads_to_a_page_linking_both(three, member):
    b, c = three["b"], three["c"]
    shared = _made_upstream(b, "s")  # of the second organisation, which B and C both see
    for connection in (b, c):
        assert not sync.run_pass(connection=connection, force=True).error
    assert Batch.objects.filter(batch_id=shared).count() == 2
    listed = member.get(reverse("batches:list"))
    assert listed.status_code == 200 and listed.content.decode().count(f">{shared}</a>") == 2  # a row in each

    detail = reverse("batches:detail", args=[shared])
    page = member.get(detail)
    assert page.status_code == 300
    body = page.content.decode()
    assert f"{detail}?connection=b" in body and f"{detail}?connection=c" in body
    picked = member.get(detail + "?connection=c")
    assert picked.status_code == 200 and picked.context["batch"].connection == c
    assert member.get(detail + "?connection=b").context["batch"].connection == b


def test_a_running_gateway_batch_is_cancelled_from_the_list_in_bulk(three, member, settings):
    settings.SANDBOX_SPEED = 1.0  # real time: the batch still runs when the cancel arrives
    c = three["c"]
    settings.SANDBOX_SECOND_ID_STYLE = "gateway"
    batch_id = _made_upstream(c, "k")
    assert not sync.run_pass(connection=c, force=True).error

    listed = member.get(reverse("batches:list"))
    assert listed.status_code == 200
    assert f'href="{reverse("batches:detail", args=[batch_id])}' in listed.content.decode()
    confirm = member.get(reverse("batches:bulk_cancel"), {"batch_id": batch_id})
    assert confirm.status_code == 200 and batch_id in confirm.content.decode()
    done = member.post(reverse("batches:bulk_cancel"), {"batch_id": batch_id, "confirm": "yes"})
    assert done.status_code == 200 and "is not a batch id" not in done.content.decode()
    assert services.get_client(connection=c).retrieve_batch(batch_id).status in ("cancelling", "cancelled")
    assert Batch.objects.get(connection=c, batch_id=batch_id).status in ("cancelling", "cancelled")


def test_a_bulk_cancel_refuses_an_id_in_two_connections(three, member, settings):
    settings.SANDBOX_SPEED = 1.0
    b, c = three["b"], three["c"]
    shared = _made_upstream(b, "s")
    for connection in (b, c):
        assert not sync.run_pass(connection=connection, force=True).error
    confirm = member.get(reverse("batches:bulk_cancel"), {"batch_id": shared}).content.decode()
    assert "a batch in more than one connection: cancel it from its page" in confirm
    done = member.post(reverse("batches:bulk_cancel"), {"batch_id": shared, "confirm": "yes"})
    assert done.status_code == 200
    assert "a batch in more than one connection: cancel it from its page" in done.content.decode()
    assert services.get_client(connection=b).retrieve_batch(shared).status not in ("cancelling", "cancelled")
    assert not Batch.objects.filter(batch_id=shared, cancel_requested_at__isnull=False).exists()


def test_a_bulk_cancel_of_the_lists_box_cancels_the_id_on_that_rows_connection(three, member, settings):
    settings.SANDBOX_SPEED = 1.0  # real time: the batch still runs when the cancel arrives
    b, c = three["b"], three["c"]
    shared = _made_upstream(b, "s")
    for connection in (b, c):
        assert not sync.run_pass(connection=connection, force=True).error
    listed = member.get(reverse("batches:list")).content.decode()
    assert f'value="b/{shared}"' in listed and f'value="c/{shared}"' in listed  # each row's box names its connection

    confirm = member.get(reverse("batches:bulk_cancel"), {"batch_id": f"c/{shared}"})
    assert [batch.connection for batch in confirm.context["to_cancel"]] == [c]
    assert f'value="c/{shared}"' in confirm.content.decode()
    done = member.post(reverse("batches:bulk_cancel"), {"batch_id": f"c/{shared}", "confirm": "yes"})

    assert done.status_code == 200 and done.context["tally"]["cancelled"] == 1
    assert Batch.objects.get(connection=c, batch_id=shared).cancel_requested_at is not None
    assert Batch.objects.get(connection=b, batch_id=shared).cancel_requested_at is None
    assert services.get_client(connection=c).retrieve_batch(shared).status in ("cancelling", "cancelled")


def test_a_gateway_connections_list_is_paged_by_its_long_ids(three, settings):
    c = three["c"]
    settings.SANDBOX_SECOND_ID_STYLE = "gateway"
    made = {_made_upstream(c, f"p{n}", count=1) for n in range(5)}
    client = services.get_client(connection=c)
    first = sync.sync_batches(client, connection=c, page_size=2)  # a fresh install: a page now, the rest imported
    assert first.seen == 5 and first.import_calls == 2  # pages of 2: the first, then 2 and 1 from its cursor
    assert _ids(c) == made
    state = SyncState.objects.named(c.list_state)
    assert state.import_done_at is not None and state.high_water_id in made
    again = sync.sync_batches(client, connection=c, page_size=2)  # the walk stops at the high-water mark
    assert again.pages >= 1 and not again.stopped and _ids(c) == made


def test_an_automatic_retry_of_a_gateway_batch_is_made_on_its_connection_and_recorded_in_full(three, settings):
    c = three["c"]
    settings.SANDBOX_SECOND_ID_STYLE = "gateway"
    tasks = TaskQueue()
    assert not sync.run_pass(connection=c, force=True).error  # the history import of an empty list is done
    metadata = {"sandbox_scenario": "all_fail", "batchboard_auto_retry": "1"}  # every line fails with a 500
    parent_id = _made_upstream(c, "auto", count=3, metadata=metadata)
    _finished(parent_id)
    assert not sync.run_pass(connection=c, force=True).error  # seen final: its results are kept, then retried
    tasks.drain()

    parent = Batch.objects.get(connection=c, batch_id=parent_id)
    noted = AutoRetry.objects.get(parent=parent)
    assert noted.state == AutoRetryState.SUBMITTED, noted.problem
    assert len(noted.retry_batch_id) > 128 and GATEWAY_ID.fullmatch(noted.retry_batch_id)
    child = Batch.objects.get(connection=c, batch_id=noted.retry_batch_id)
    assert (child.retry_of, child.attempt, child.lineage_state) == (parent_id, 1, LineageState.VERIFIED)
    assert SandboxBatch.objects.get(pk=child.batch_id).organisation == organisations.SECOND
    assert AuditEvent.objects.filter(action="create", batch_id=child.batch_id).exists()  # the whole id, not cut


def test_an_azure_batchs_files_are_downloaded_through_its_own_path_and_header(three, member):
    b = three["b"]
    batch_id = _made_upstream(b, "z", count=2)
    _finished(batch_id)
    detail_url = reverse("batches:detail", args=[batch_id])
    assert member.get(detail_url).status_code == 404  # not synced yet, and A, B and C all take its shape
    detail = member.get(detail_url + "?connection=b")  # the one to ask is named
    assert detail.status_code == 200 and detail.context["batch"].connection == b
    for kind, expected in (("input", b'"custom_id": "z1"'), ("output", b'"custom_id": "z1"')):
        response = member.get(reverse("batches:file", args=[batch_id, kind]))
        assert response.status_code == 200, kind
        assert expected in b"".join(response.streaming_content)
    spent = UpstreamMinute.objects.filter(connection=b).aggregate(calls=Sum("calls"))["calls"]
    assert spent >= 3 and not UpstreamMinute.objects.exclude(connection=b).exists()
