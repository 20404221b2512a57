"""The API's access table: {anonymous, viewer of A, creator of A, viewer of B, superuser} x {a batch of A, a batch of
B}, each with a token holding every scope, so that only the user's teams limit it. Another team's batch answers the
404 of an id that exists nowhere, word for word. (tests/views/test_access_matrix.py exempts /api/v1/ for this.)"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.test import Client

from api.models import SCOPES
from batches.models import Connection, ConnectionSource, record_batch
from tests.api.conftest import TokenClient, make_token
from tests.conftest import act_cells, completed, read_cells
from tests.fake_api import FakeApi, Reply

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "viewer_a", "creator_a", "viewer_b", "superuser")
MADE_UP_ID = "batch_" + "0" * 32


def _read(ok: int) -> dict:
    return read_cells(ok, anonymous=401)


def _act(ok: int) -> dict:
    return act_cells(ok, anonymous=401)


# (method, path, expected); a finished batch's cancel is refused with 409, past every permission check.
TABLE = {
    "detail": ("get", "/api/v1/batches/{id}", _read(200)),
    "timeline": ("get", "/api/v1/batches/{id}/timeline", _read(200)),
    "cancel": ("post", "/api/v1/batches/{id}/cancel", _act(409)),
    # Past every permission check: the results of these batches are not kept (yet).
    "results": ("get", "/api/v1/batches/{id}/results", _read(409)),
    "result": ("get", "/api/v1/batches/{id}/results/1", _read(409)),
    "export": ("get", "/api/v1/batches/{id}/results/export.jsonl", _read(409)),
    "job": ("get", "/api/v1/jobs/{id}", _read(200)),
    "job cancel": ("post", "/api/v1/jobs/{id}/cancel", _act(200)),  # nothing of the job is running
    # Past every permission check: a retry needs kept results, and so does a job's final result.
    "retry": ("post", "/api/v1/batches/{id}/retry", _act(409)),
    "final": ("get", "/api/v1/batches/{id}/final", _read(409)),
    "final csv": ("get", "/api/v1/batches/{id}/final/export.csv", _read(409)),
    "final jsonl": ("get", "/api/v1/batches/{id}/final/export.jsonl", _read(409)),
    "file": ("get", "/api/v1/batches/{id}/files/output", _read(200)),
}
# The scope each operation needs: a superuser's token without it is refused before anything else.
SCOPE_OF = {"cancel": "cancel", "retry": "create", "job cancel": "cancel"}
# The body of each POST: what a client that may act would send (so that only permissions and state decide).
BODIES = {"retry": {"select": "failed"}}


@pytest.fixture(scope="module")
def _module_world(django_db_setup, django_db_blocker):
    """Built once for the module, in a transaction that each test's own nests in (as a savepoint, rolled back after
    the test) and that is rolled back after the module, as Django's TestCase.setUpTestData does: the same rows for
    each of the table's 150 tests, not made 150 times."""
    with django_db_blocker.unblock(), pytest.MonkeyPatch.context() as environment, FakeApi() as server:
        outer = transaction.atomic()
        outer._from_testcase = True  # what Django's TestCase marks its own transactions with
        outer.__enter__()
        try:
            yield _build_world(server, environment)
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def fake_api(_module_world, settings):
    """The module's fake API (the connections' upstream), its log of requests this test's own; the dashboard's client
    talks to it without retries (as tests/conftest.py's fake_api)."""
    server = _module_world["fake_api"]
    settings.OPENAI_BASE_URL = server.url
    settings.OPENAI_MAX_RETRIES = 0
    with server._lock:
        server.received.clear()
    return server


@pytest.fixture
def world(_module_world, fake_api):
    """The module's world, with clients of this test's own (a client keeps the cookies of its answers)."""
    clients = {role: TokenClient(secret) for role, secret in _module_world["secrets"].items()}
    clients["anonymous"] = Client()
    return {**_module_world, "clients": clients}


def _build_world(fake_api: FakeApi, environment: pytest.MonkeyPatch) -> dict:
    """Two connections whose upstream (the fake API) knows no batch: an id the cache lacks is a 404 from upstream."""
    default = Connection.objects.default()
    Connection.objects.filter(pk=default.pk).update(open_to_everyone=False)
    teams = {name: Group.objects.create(name=name) for name in ("a-viewers", "a-creators", "b-viewers")}
    connections = {}
    for side in ("A", "B"):
        environment.setenv(f"API_ACCESS_KEY_{side}", f"sk-test-{side}")
        connections[side] = Connection.objects.create(
            name=f"Team {side}",
            slug=f"team-{side.lower()}",
            source=ConnectionSource.ADMIN,
            base_url=fake_api.url,
            api_key_env=f"API_ACCESS_KEY_{side}",
        )
    connections["A"].view_teams.add(teams["a-viewers"])
    connections["A"].cancel_teams.add(teams["a-creators"])
    connections["A"].create_teams.add(teams["a-creators"])
    connections["B"].view_teams.add(teams["b-viewers"])
    # Both batches' output file (file-out), as the API streams it.
    fake_api.script("GET", "/files/file-out/content", Reply(200, b'{"custom_id": "a"}\n'))
    batches = {
        side: record_batch(completed(f"batch_side{side.lower()}1"), connection=connections[side]) for side in "AB"
    }
    users = {
        "viewer_a": _user("viewer-a", teams["a-viewers"]),
        "creator_a": _user("creator-a", teams["a-creators"]),
        "viewer_b": _user("viewer-b", teams["b-viewers"]),
        "superuser": User.objects.create_superuser("root", password="pw-root"),
    }
    secrets = {role: make_token(user)[1] for role, user in users.items()}
    return {"batches": batches, "secrets": secrets, "connections": connections, "fake_api": fake_api}


def _user(name: str, team: Group) -> User:
    user = User.objects.create_user(name, password=f"pw-{name}")
    user.groups.add(team)
    return user


def _cells():
    for name, (_method, _path, expected) in TABLE.items():
        for role in ROLES:
            for side in ("A", "B"):
                yield pytest.param(name, role, side, expected[role][side], id=f"{name} {role} {side}")


def _send(client, method: str, path: str, body: dict | None):
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, body, content_type="application/json")


@pytest.mark.parametrize(("name", "role", "side", "status"), list(_cells()))
def test_it_answers_each_cell_of_the_api_access_table(world, name, role, side, status):
    method, path, _expected = TABLE[name]
    batch_id = world["batches"][side].batch_id
    client = world["clients"][role]

    response = _send(client, method, path.format(id=batch_id), BODIES.get(name))

    assert response.status_code == status, getattr(response, "content", b"")[:300]
    assert status == 200 or set(response.json()) == {"error"}
    if status == 404:
        made_up = _send(client, method, path.format(id=MADE_UP_ID), BODIES.get(name))
        assert made_up.status_code == 404
        assert response.content.decode().replace(batch_id, MADE_UP_ID) == made_up.content.decode()


@pytest.mark.parametrize("name", list(TABLE))
def test_it_holds_each_operation_to_its_tokens_scopes(world, name):
    """The table's other half: whatever the user's teams allow, a token lacking the operation's scope gets 403."""
    method, path, _expected = TABLE[name]
    needed = SCOPE_OF.get(name, "read")
    superuser = User.objects.get(username="root")
    batch_id = world["batches"]["A"].batch_id
    lacking = TokenClient(make_token(superuser, *(s for s in SCOPES if s != needed), name="narrow")[1])
    holding = TokenClient(make_token(superuser, needed, name="exact")[1])

    refused = _send(lacking, method, path.format(id=batch_id), BODIES.get(name))
    allowed = _send(holding, method, path.format(id=batch_id), BODIES.get(name))

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert allowed.status_code == TABLE[name][2]["superuser"]["A"]


@pytest.mark.parametrize("role", ROLES)
def test_it_lists_only_the_batches_of_the_users_connections(world, role):
    response = world["clients"][role].get("/api/v1/batches")

    if role == "anonymous":
        assert response.status_code == 401
        return
    seen = {batch["id"] for batch in response.json()["data"]}
    visible = {"viewer_a": "A", "creator_a": "A", "viewer_b": "B", "superuser": "AB"}[role]
    assert seen == {world["batches"][side].batch_id for side in visible}


@pytest.mark.parametrize(
    ("role", "side", "status", "field"),
    [
        ("anonymous", "A", 401, None),
        ("viewer_a", "A", 403, None),
        ("viewer_b", "B", 403, None),
        ("creator_a", "A", 400, "__all__"),  # allowed on A: only the missing file is wrong
        ("creator_a", "B", 400, "connection"),  # not a connection the creator may create on
    ],
)
def test_it_creates_only_on_a_connection_the_users_team_may_create_on(world, fake_api, role, side, status, field):
    slug = world["connections"][side].slug

    response = world["clients"][role].post("/api/v1/batches", {"connection": slug})

    assert response.status_code == status, response.content
    if field:
        assert field in response.json()["error"]["details"]["fields"]
    assert fake_api.received == []


def test_it_cancels_in_bulk_only_what_the_user_may_cancel(world, fake_api):
    ids = [world["batches"]["A"].batch_id, world["batches"]["B"].batch_id]

    response = world["clients"]["creator_a"].post(
        "/api/v1/batches/cancel", {"batch_ids": ids}, content_type="application/json"
    )

    results = {item["id"]: item["error"] for item in response.json()["data"]}
    assert "already finished" in results[ids[0]]
    assert results[ids[1]] == "There is no batch with this id that you may cancel."
    assert (
        world["clients"]["viewer_a"]
        .post("/api/v1/batches/cancel", {"batch_ids": ids}, content_type="application/json")
        .status_code
        == 403
    )
