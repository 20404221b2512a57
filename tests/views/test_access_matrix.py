"""Issue 19's access table: every URL pattern of the project x {anonymous, viewer of A, creator of A, viewer of B,
superuser} x {a batch of A, a batch of B}, with the status each cell must answer; then what the pages, counts,
searches, menus and exports show to a viewer of one connection about the other's batches.

Two connections, A and B, are the sandbox's two organisations (keys "sk-sandbox" and "sk-sandbox-second", read from
environment variables the connections name) served by a real HTTP server in this process, so that the pages that
ask upstream (file downloads, unknown ids, the results fetched and kept) ask the real sandbox. The world is built
once for the module: the tests here only read it or add rows none of the others count.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection as db_connection
from django.test import Client, override_settings
from django.test.testcases import LiveServerThread, _StaticFilesHandler
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from batches import access, spending, sync
from batches.middleware import SESSION_SEEN_KEY, SESSION_STARTED_KEY
from batches.models import Batch, Connection, ConnectionSource, DailySpend, SavedView, record_batch
from results.models import ArchiveState, ResultArchive
from sandbox import clock
from sharing.models import ShareLink
from tests.conftest import TaskQueue, act_cells, completed, read_cells

ROLES = ("anonymous", "viewer_a", "creator_a", "viewer_b", "superuser")
SIDES = ("A", "B")
CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
# What only B's batches have: a viewer of A must never see these in a menu, a count or an export.
B_MODEL = "text-embedding-3-small"
KEY_VARIABLES = {"A": ("MATRIX_TEAM_A_KEY", "sk-sandbox"), "B": ("MATRIX_TEAM_B_KEY", "sk-sandbox-second")}
MADE_UP_ID = "batch_" + "0" * 32


# --- The world: two connections of the sandbox's two organisations, their teams, users and batches ---------------


@dataclass
class World:
    sandbox_url: str
    connections: dict[str, Connection]
    users: dict[str, User | None]
    batches: dict[str, Batch]  # per side: a completed batch with its results kept
    failed_b: Batch  # B's batch that failed validation: "needs attention", for B's viewers only
    paused: Connection
    paused_batch: Batch
    share_tokens: dict[str, str]  # per side: a link nobody revokes
    revocable: dict[str, list[int]] = field(default_factory=dict)  # per side: links for the revoke cells
    extra_users: dict[str, User] = field(default_factory=dict)
    sessions: dict[str, dict] = field(default_factory=dict)  # per signed-in role: what logging in put in its session


def _sandbox_line(custom_id: str, endpoint: str, model: str) -> dict:
    if endpoint == EMBEDDINGS:
        body = {"model": model, "input": f"text of {custom_id}"}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": f"Hi {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def _sandbox_batch(url: str, key: str, *, endpoint=CHAT, model="gpt-4o-mini", line_url=None) -> str:
    """A batch of three lines made in the sandbox's organisation of `key` over HTTP, as any client would; lines sent
    to another endpoint than the batch's (`line_url`) make it fail validation."""
    headers = {"Authorization": f"Bearer {key}"}
    lines = [_sandbox_line(f"req-{n}", line_url or endpoint, model) for n in range(3)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = requests.post(
        f"{url}/files", headers=headers, files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}, timeout=30
    )
    assert upload.status_code == 200, upload.text
    body = {"input_file_id": upload.json()["id"], "endpoint": endpoint, "completion_window": "24h"}
    created = requests.post(f"{url}/batches", headers=headers, json=body, timeout=30)
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    for _ in range(500):
        status = requests.get(f"{url}/batches/{batch_id}", headers=headers, timeout=30).json()["status"]
        if status in ("completed", "failed", "expired", "cancelled"):
            return batch_id
        clock.advance(60)
    pytest.fail(f"sandbox batch {batch_id} never finished")


def _user(username: str, *groups: Group, **fields) -> User:
    user = User.objects.create_user(username=username, password=f"pw-{username}", **fields)
    user.groups.add(*groups)
    return user


def _keep_results(batch: Batch) -> None:
    """The background work: the final batch's results fetched from the sandbox and indexed (BATCHBOARD_ARCHIVE=all
    asks for them when the batch is recorded final)."""
    TaskQueue().drain()
    assert ResultArchive.objects.get(batch=batch).state == ArchiveState.READY


def _link(batch: Batch, maker: User) -> tuple[ShareLink, str]:
    return ShareLink.make(batch, maker, lifetime=timezone.timedelta(hours=24), allow_results=True, allow_exports=True)


@pytest.fixture(scope="module")
def sandbox_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """The project (and so its sandbox) served over real HTTP by a thread of this process, for the whole module."""
    files = tmp_path_factory.mktemp("matrix-sandbox-files")
    results = tmp_path_factory.mktemp("matrix-results")
    module_settings = override_settings(
        ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "127.0.0.1", "testserver"],
        SANDBOX_FILES_DIR=files,
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            "results": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": results}},
        },
    )
    module_settings.enable()
    server = LiveServerThread("127.0.0.1", _StaticFilesHandler)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    if server.error:
        raise server.error
    try:
        yield {"url": f"http://127.0.0.1:{server.port}/sandbox/v1", "files": files, "results": results}
    finally:
        server.terminate()
        module_settings.disable()


@pytest.fixture(autouse=True)
def _module_paths(settings, sandbox_server):
    """Each test's own sandbox files and results folders (tests/conftest.py) are this module's: the world's files."""
    settings.SANDBOX_FILES_DIR = sandbox_server["files"]
    settings.STORAGES = {
        **settings.STORAGES,
        "results": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": sandbox_server["results"]},
        },
    }
    settings.OPENAI_BASE_URL = sandbox_server["url"]
    settings.BATCHBOARD_ARCHIVE = "all"
    # The table is hundreds of upstream-causing requests in a minute by five users (each unknown id is asked of the
    # API): the per-user and per-connection limits, counted in the database for the whole module, are tested
    # elsewhere and must not turn a 404 cell into a 503 here.
    settings.BATCHBOARD_USER_UPSTREAM_PER_MINUTE = 100_000
    settings.BATCHBOARD_UPSTREAM_BUDGET = 100_000


@pytest.fixture(scope="module")
def world(sandbox_server, django_db_blocker):
    """Built once, committed (the sandbox's thread reads it), and flushed after the module as a transactional test
    database is."""
    url = sandbox_server["url"]
    with pytest.MonkeyPatch.context() as env, django_db_blocker.unblock():
        for variable, key in KEY_VARIABLES.values():
            env.setenv(variable, key)
        try:
            with override_settings(
                SANDBOX_SPEED=3600.0,
                SANDBOX_SEED=False,
                SANDBOX_LATENCY=0.0,
                SANDBOX_ERROR_RATE=0.0,
                SANDBOX_RATE_LIMIT_RATE=0.0,
                OPENAI_BASE_URL=url,
                BATCHBOARD_ARCHIVE="all",
                BATCHBOARD_REFRESH_INTERVAL=0.0,
            ):
                db_connection.test_callbacks_run = 0
                yield _build_world(url)
        finally:
            clock.reset()
            call_command("flush", interactive=False, verbosity=0)


def _build_world(url: str) -> World:
    default = Connection.objects.default()
    Connection.objects.filter(pk=default.pk).update(open_to_everyone=False)
    teams = {
        name: Group.objects.create(name=name)
        for name in ("team-a-viewers", "team-a-creators", "team-b-viewers", "team-paused")
    }
    connections = {}
    for side in SIDES:
        connections[side] = Connection.objects.create(
            name=f"Team {side}",
            slug=f"team-{side.lower()}",
            source=ConnectionSource.ADMIN,
            base_url=url,
            api_key_env=KEY_VARIABLES[side][0],
        )
    connections["A"].view_teams.add(teams["team-a-viewers"])
    connections["A"].cancel_teams.add(teams["team-a-creators"])
    connections["A"].create_teams.add(teams["team-a-creators"])
    connections["B"].view_teams.add(teams["team-b-viewers"])
    # A third account, paused: its team still sees its history. Its key is A's (its batch is recorded by hand).
    paused = Connection.objects.create(
        name="Old project", slug="old-project", base_url=url, api_key_env=KEY_VARIABLES["A"][0], paused=True
    )
    paused.view_teams.add(teams["team-paused"])

    ids = {
        "A": _sandbox_batch(url, KEY_VARIABLES["A"][1]),
        "B": _sandbox_batch(url, KEY_VARIABLES["B"][1], endpoint=EMBEDDINGS, model=B_MODEL),
        "failed_b": _sandbox_batch(url, KEY_VARIABLES["B"][1], endpoint=EMBEDDINGS, model=B_MODEL, line_url=CHAT),
    }
    for side in SIDES:
        outcome = sync.run_pass(connection=connections[side], force=True)
        assert not getattr(outcome, "error", None), outcome
    batches = {side: Batch.objects.get(connection=connections[side], batch_id=ids[side]) for side in SIDES}
    failed_b = Batch.objects.get(connection=connections["B"], batch_id=ids["failed_b"])
    assert batches["A"].status == batches["B"].status == "completed" and failed_b.status == "failed"
    for side in SIDES:
        _keep_results(batches[side])
    paused_batch = record_batch(completed("batch_pausedhistory1"), connection=paused)

    users = {
        "anonymous": None,
        "viewer_a": _user("viewer-a", teams["team-a-viewers"]),
        "creator_a": _user("creator-a", teams["team-a-creators"]),
        "viewer_b": _user("viewer-b", teams["team-b-viewers"]),
        "superuser": User.objects.create_superuser("root", password="pw-root"),
    }
    extra = {
        "no_team": _user("no-team"),
        "paused_team": _user("paused-team", teams["team-paused"]),
        "inactive": _user("inactive-a", teams["team-a-viewers"], is_active=False),
        "both": _user("both-teams", teams["team-a-viewers"], teams["team-b-viewers"]),
    }
    share_tokens = {side: _link(batches[side], users["superuser"])[1] for side in SIDES}
    sessions = {role: _logged_in_session(user) for role, user in {**users, **extra}.items() if user is not None}
    revocable = {side: [_link(batches[side], users["superuser"])[0].pk for _ in ROLES] for side in SIDES}
    return World(
        sandbox_url=url,
        connections=connections,
        users=users,
        batches=batches,
        failed_b=failed_b,
        paused=paused,
        paused_batch=paused_batch,
        share_tokens=share_tokens,
        revocable=revocable,
        extra_users=extra,
        sessions=sessions,
    )


def _logged_in_session(user: User) -> dict:
    client = Client()
    client.force_login(user)
    return dict(client.session.items())


# The world is committed (the server's thread reads it) and kept for the module: these tests run without the
# transaction pytest-django wraps a `django_db` test in (its `_django_db_helper`, replaced for this module only); the
# marker still has the test database made for the session.
pytestmark = pytest.mark.django_db


@pytest.fixture
def _django_db_helper(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield


def _client(world: World, role: str) -> Client:
    """A client signed in as the role's user: a session of its own holding what logging in put in the role's first
    session, its lifetimes starting now as at a login (logging in again for each of the hundreds of cells, with the
    login's signals and writes, was a fifth of the table's time)."""
    client = Client()
    if role in world.sessions:
        session = client.session
        session.update(world.sessions[role])
        session[SESSION_STARTED_KEY] = session[SESSION_SEEN_KEY] = int(time.time())
        session.save()
    return client


# --- The table ---------------------------------------------------------------------------------------------------

# Patterns outside the batch dimension, each with its own rules and tests (listed here so the table can assert that
# every other pattern of the project is in it).
EXEMPT_PREFIXES = {
    "admin/": "Django's admin: staff only, by model permissions (tests/views/test_admin.py)",
    # Tokens or a session, answered 401/403/404 in JSON rather than 302 and HTML: the API's own table of the same
    # roles and sides is tests/api/test_access.py.
    "api/v1/": "the JSON API: its own access table (tests/api/test_access.py)",
    "sandbox/": "the simulated upstream API: authenticated by its keys, no session (tests/sandbox/)",
    "shared/": "share-link pages: the token is the permission (test_it_opens_a_share_link_for_anyone_with_it)",
    "static/": "static files",
    "webhooks/": "signed deliveries, a receiver per connection, no session (tests/views/test_webhooks.py)",
}
EXEMPT = {
    "accounts/login/": "the login page: for anyone",
    "accounts/logout/": "logging out",
    "accounts/oidc/login/": "single sign-on: starts the login (tests/accounts/)",
    "accounts/oidc/callback/": "single sign-on: the provider's redirect (tests/accounts/)",
    "healthz": "a probe, says nothing (tests/views/test_health.py)",
    "readyz": "a probe, says nothing of batches (tests/views/test_health.py)",
    "metrics": "a bearer token, no session (test_it_answers_metrics_only_to_the_token)",
}


def _everyone(ok: int, **refused: int) -> dict:
    """A page of no batch: the same for both columns."""
    statuses = {role: refused.get(role, ok) for role in ROLES}
    statuses["anonymous"] = refused.get("anonymous", 302)
    return {role: {"A": status, "B": status} for role, status in statuses.items()}


@dataclass(frozen=True)
class Row:
    name: str  # the URL's name
    kwargs: Callable[[World, str, str], dict] = lambda world, side, role: {}
    get: dict | None = None
    post: dict | None = None
    data: Callable[[World, str, str], dict] = lambda world, side, role: {}
    per_batch: bool = True


def _batch_kwargs(**extra) -> Callable:
    return lambda world, side, role: {"batch_id": world.batches[side].batch_id, **extra}


def _revoke_kwargs(world: World, side: str, role: str) -> dict:
    return {"batch_id": world.batches[side].batch_id, "pk": world.revocable[side][ROLES.index(role)]}


def _api_token_kwargs(world: World, side: str, role: str) -> dict:
    """A token of the role's own (anonymous: the superuser's), so that revoking it is allowed for its owner."""
    from api.models import ApiToken

    owner = world.users[role] or world.users["superuser"]
    token, _secret = ApiToken.make(owner, name=f"{role} {side}", scopes=["read"], expires_at=timezone.now())
    return {"pk": token.pk}


def _saved_view_kwargs(world: World, side: str, role: str) -> dict:
    owner = world.users[role] or world.users["superuser"]
    view, _ = SavedView.objects.get_or_create(owner=owner, name=f"view {side}", defaults={"url": "/batches/"})
    return {"pk": view.pk}


def _destination_kwargs(world: World, side: str, role: str) -> dict:
    """A notification destination of the user's own (a superuser's for the anonymous cells): each role acts on its
    own; another's answers 404 (tests/notifications/)."""
    from notifications.models import Destination, Kind

    owner = world.users[role] or world.users["superuser"]
    destination, _ = Destination.objects.get_or_create(
        user=owner, name=f"destination {side}", defaults={"kind": Kind.APPRISE, "shown": "json://127.0.0.1"}
    )
    return {"pk": destination.pk}


TABLE: dict[str, Row] = {
    "": Row("", get=_everyone(302), per_batch=False),  # the redirect to the list
    "batches/": Row("batches:list", get=_everyone(200), per_batch=False),
    "batches/new/": Row(
        "batches:create",
        get=_everyone(200, viewer_a=403, viewer_b=403),
        post=_everyone(200, viewer_a=403, viewer_b=403),  # the form with its problems: nothing to create from
        data=lambda world, side, role: {"connection": world.connections[side].pk},
        per_batch=False,
    ),
    "batches/cancel/": Row(
        "batches:bulk_cancel",
        get=_everyone(200, viewer_a=403, viewer_b=403),
        post=_everyone(200, viewer_a=403, viewer_b=403),
        data=lambda world, side, role: {"batch_id": world.batches[side].batch_id, "confirm": "yes"},
    ),
    "batches/prices/": Row("batches:prices", get=_everyone(200), per_batch=False),
    # Every signed-in user has one: of the connections and teams they may see (tests/views/test_spending.py).
    "batches/spending/": Row("batches:spending", get=_everyone(200), per_batch=False),
    "batches/spending.csv": Row("batches:spending_csv", get=_everyone(200), per_batch=False),
    "batches/time-zone/": Row(
        "batches:time_zone",
        get=_everyone(200),
        post=_everyone(302),
        data=lambda world, side, role: {"time_zone": "UTC"},
        per_batch=False,
    ),
    "batches/views/": Row("batches:saved_views", get=_everyone(200), per_batch=False),
    "batches/views/save/": Row(
        "batches:save_view",
        post=_everyone(302),
        data=lambda world, side, role: {"url": "/batches/?status=failed", "name": f"{role} {side}"},
        per_batch=False,
    ),
    "batches/views/<int:pk>/delete/": Row(
        "batches:delete_view", kwargs=_saved_view_kwargs, post=_everyone(302), per_batch=False
    ),
    "batches/<batch_id:batch_id>/": Row("batches:detail", kwargs=_batch_kwargs(), get=read_cells()),
    "batches/<batch_id:batch_id>/cancel/": Row(
        "batches:cancel", kwargs=_batch_kwargs(), get=act_cells(200), post=act_cells(302)
    ),
    "batches/<batch_id:batch_id>/files/<str:kind>/": Row(
        "batches:file", kwargs=_batch_kwargs(kind="input"), get=read_cells()
    ),
    "batches/<batch_id:batch_id>/results/": Row("results:list", kwargs=_batch_kwargs(), get=read_cells()),
    "batches/<batch_id:batch_id>/results/export.csv": Row(
        "results:export_csv", kwargs=_batch_kwargs(), get=read_cells()
    ),
    "batches/<batch_id:batch_id>/results/export.jsonl": Row(
        "results:export_jsonl", kwargs=_batch_kwargs(), get=read_cells()
    ),
    "batches/<batch_id:batch_id>/results/files/<str:kind>.jsonl": Row(
        "results:file", kwargs=_batch_kwargs(kind="input"), get=read_cells()
    ),
    "batches/<batch_id:batch_id>/results/rows/<int:position>/": Row(
        "results:request", kwargs=_batch_kwargs(position=1), get=read_cells()
    ),
    "batches/<batch_id:batch_id>/results/rows/<int:position>/<str:side>.jsonl": Row(
        "results:raw_line", kwargs=_batch_kwargs(position=1, side="input"), get=read_cells()
    ),
    "batches/<batch_id:batch_id>/results/rows/": Row(
        "results:request_of",
        kwargs=_batch_kwargs(),
        get=read_cells(302),  # to the request page of ?custom_id=
        data=lambda world, side, role: {"custom_id": "req-1"},
    ),
    "batches/<batch_id:batch_id>/results/<path:custom_id>/": Row(
        "results:request_of_custom_id", kwargs=_batch_kwargs(custom_id="req-1"), get=read_cells(302)
    ),
    "batches/<batch_id:batch_id>/retry/": Row(
        "retries:confirm",
        kwargs=_batch_kwargs(),
        get=act_cells(200),
        post=act_cells(400),  # past the permission check: no lines were chosen
    ),
    "batches/<batch_id:batch_id>/final/": Row("retries:final", kwargs=_batch_kwargs(), get=read_cells()),
    "batches/<batch_id:batch_id>/final.csv": Row("retries:final_csv", kwargs=_batch_kwargs(), get=read_cells()),
    "batches/<batch_id:batch_id>/final.jsonl": Row("retries:final_jsonl", kwargs=_batch_kwargs(), get=read_cells()),
    "batches/<batch_id:batch_id>/job/cancel/": Row(
        "retries:cancel_job",
        kwargs=_batch_kwargs(),
        post=act_cells(303),  # the batch's job has nothing running: nothing is sent
    ),
    "batches/<batch_id:batch_id>/share-links/": Row(
        "sharing:make",
        kwargs=_batch_kwargs(),
        post=read_cells(201),  # making a link needs view access, nothing more
        data=lambda world, side, role: {"hours": "24", "name": f"by {role}"},
    ),
    "batches/<batch_id:batch_id>/share-links/<int:pk>/revoke/": Row(
        "sharing:revoke",
        kwargs=_revoke_kwargs,
        post=act_cells(302),  # view access, and the link's maker or a user who may cancel on its connection
    ),
    "notifications/": Row("notifications:page", get=_everyone(200), per_batch=False),
    "notifications/destinations/add/": Row(
        "notifications:add_destination",
        post=_everyone(400),
        per_batch=False,  # the form with its problems
    ),
    "notifications/destinations/<int:pk>/delete/": Row(
        "notifications:delete_destination", kwargs=_destination_kwargs, post=_everyone(302), per_batch=False
    ),
    "notifications/destinations/<int:pk>/resume/": Row(
        "notifications:resume_destination", kwargs=_destination_kwargs, post=_everyone(302), per_batch=False
    ),
    "notifications/destinations/<int:pk>/test/": Row(
        "notifications:test_destination", kwargs=_destination_kwargs, post=_everyone(302), per_batch=False
    ),
    "notifications/subscriptions/add/": Row(
        "notifications:add_subscription",
        post=_everyone(400),
        per_batch=False,  # the form with its problems
    ),
    "notifications/subscriptions/<int:pk>/delete/": Row(
        "notifications:delete_subscription",
        kwargs=lambda world, side, role: {"pk": 0},
        post=_everyone(302),
        per_batch=False,  # "not yours, or gone": nothing changed
    ),
    "notifications/watch/<int:pk>/": Row(
        "notifications:watch",
        kwargs=lambda world, side, role: {"pk": world.batches[side].pk},
        post=read_cells(302),  # back to the batch's page (with "choose a destination"); 404 for a batch not theirs
    ),
    # Every signed-in user makes and revokes their own tokens (tests/api/test_tokens.py).
    "api-tokens/": Row(
        "api_tokens",
        get=_everyone(200),
        post=_everyone(200),
        data=lambda world, side, role: {"name": f"{role}", "scopes": ["read"], "expires_days": "7"},
        per_batch=False,
    ),
    "api-tokens/<int:pk>/revoke/": Row(
        "api_token_revoke", kwargs=_api_token_kwargs, post=_everyone(302), per_batch=False
    ),
    "accounts/password_change/": Row("password_change", get=_everyone(200), per_batch=False),
    "accounts/password_change/done/": Row("password_change_done", get=_everyone(200), per_batch=False),
}


def _routes(patterns=None, prefix: str = ""):
    """Every URL pattern of the project as its full route ("batches/<batch_id:batch_id>/cancel/")."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def _exempt(route: str) -> bool:
    return route in EXEMPT or route.startswith(tuple(EXEMPT_PREFIXES)) or route.lstrip("^").startswith("static/")


def test_it_has_an_expectation_for_every_url_pattern_of_the_project():
    routes = set(_routes())
    missing = sorted(route for route in routes if not _exempt(route) and route not in TABLE)
    assert missing == [], "URL patterns without a row in the access table (add one, or exempt it with a reason)"
    assert sorted(set(TABLE) - routes) == [], "rows of the access table whose pattern is gone"
    assert set(EXEMPT) <= routes


def _cells():
    for route, row in TABLE.items():
        for method, expected in (("GET", row.get), ("POST", row.post)):
            if expected is None:
                continue
            for role in ROLES:
                for side in SIDES if row.per_batch or row.name == "batches:create" else SIDES[:1]:
                    yield pytest.param(route, method, role, side, id=f"{method} {route or '/'} {role} {side}")


def _request(client: Client, world: World, row: Row, method: str, role: str, side: str, **headers):
    url = reverse(row.name, kwargs=row.kwargs(world, side, role)) if row.name else "/"
    data = row.data(world, side, role)
    if method == "GET":
        return client.get(url, data, headers=headers)
    return client.post(url, data, headers=headers)


def _same_as_for_a_made_up_id(response, client, world: World, row: Row, method: str, role: str, side: str) -> None:
    """The 404 for a batch of another connection is the 404 for an id that exists nowhere, word for word."""
    other = world.batches[side].batch_id
    url = reverse(row.name, kwargs=row.kwargs(world, side, role)).replace(other, MADE_UP_ID)
    data = row.data(world, side, role)
    made_up = client.get(url, data) if method == "GET" else client.post(url, data)
    assert made_up.status_code == 404
    assert _without_per_response_secrets(response.content.decode().replace(other, MADE_UP_ID)) == (
        _without_per_response_secrets(made_up.content.decode())
    )


def _without_per_response_secrets(html: str) -> str:
    """The page without what differs between any two answers: the CSP nonce and the CSRF token."""
    html = re.sub(r'nonce="[^"]*"', 'nonce=""', html)
    return re.sub(r'(csrfmiddlewaretoken" value="|hx-headers=\'\{"X-CSRFToken": ")[^"]*', r"\1", html)


@pytest.mark.parametrize(("route", "method", "role", "side"), list(_cells()))
def test_it_answers_each_cell_of_the_access_table(world, route, method, role, side):
    row = TABLE[route]
    expected = (row.get if method == "GET" else row.post)[role][side]
    client = _client(world, role)

    response = _request(client, world, row, method, role, side)

    assert response.status_code == expected, response.content[:500]
    if expected == 302 and role == "anonymous":
        assert response["Location"].startswith(reverse("login") + "?next=")
    if expected == 404 and row.per_batch:
        _same_as_for_a_made_up_id(response, client, world, row, method, role, side)
    if role == "anonymous" and method == "GET":
        # A signed-out poll: a full-page redirect to the login page, never a login form swapped into a region.
        polled = _request(client, world, row, method, role, side, HX_Request="true")
        assert polled.status_code == 200 and polled["HX-Redirect"].startswith(reverse("login"))


# --- What the pages, counts, searches, menus and exports show -------------------------------------------------------


def _b_ids(world: World) -> list[str]:
    return [world.batches["B"].batch_id, world.failed_b.batch_id]


def _figures(context) -> dict:
    return {
        "counts": {entry["value"]: entry["count"] for entry in context["status_counts"]},
        "total": context["total_matching"],
        "summary": context["summary"],
        "spending": context["spending"].total,
        "endpoints": context["endpoints"],
        "models": context["models"],
    }


def _figures_of(connection: Connection) -> dict:
    """The list's figures computed over one connection's batches alone."""
    batches = Batch.objects.filter(connection=connection)
    today = timezone.localdate()
    since = timezone.make_aware(timezone.datetime.combine(today, timezone.datetime.min.time()))
    counts = batches.status_counts()
    endpoints, models = batches.endpoints_and_models()
    return {
        "total": sum(counts.values()),
        "attention": batches.needs_attention_count(counts),
        "summary": batches.summary(since=since),
        "spending": spending.figures(today=DailySpend.day_of(), connection_ids=[connection.pk]),
        "endpoints": endpoints,
        "models": models,
    }


@pytest.mark.parametrize(("role", "side", "other"), [("viewer_a", "A", "B"), ("viewer_b", "B", "A")])
def test_it_counts_lists_and_offers_only_the_batches_of_the_viewers_connection(world, role, side, other):
    response = _client(world, role).get("/batches/")

    html = response.content.decode()
    figures = _figures(response.context)
    own = _figures_of(world.connections[side])
    assert world.batches[side].batch_id in html
    assert world.batches[other].batch_id not in html
    assert (figures["total"], figures["counts"]["attention"]) == (own["total"], own["attention"])
    assert figures["summary"] == own["summary"]
    assert figures["spending"] == own["spending"]
    assert (figures["endpoints"], figures["models"]) == (own["endpoints"], own["models"])
    if role == "viewer_a":
        # B's failed batch needs attention, its embeddings run on a model only B uses: none of it shows to A.
        assert figures["counts"]["attention"] == 0 and world.failed_b.batch_id not in html
        assert B_MODEL not in html and EMBEDDINGS not in html
    else:
        assert figures["counts"]["attention"] >= 1 and B_MODEL in figures["models"]


def test_it_cancels_in_bulk_only_what_the_user_may_cancel(world):
    client = _client(world, "creator_a")
    a_id, b_id = world.batches["A"].batch_id, world.batches["B"].batch_id

    confirm = client.get("/batches/cancel/", {"batch_id": [a_id, b_id]})
    done = client.post("/batches/cancel/", {"batch_id": [a_id, b_id], "confirm": "yes"})

    assert [batch.batch_id for batch in confirm.context["to_cancel"]] == []  # both are completed already
    assert confirm.context["skipped"][1] == (b_id, None, False)
    outcomes = dict(done.context["results"])
    assert outcomes[b_id].error == "There is no batch with this id that you may cancel." and not outcomes[b_id].sent


def test_a_bulk_cancel_naming_a_connection_the_user_may_not_cancel_on_changes_nothing(world):
    client = _client(world, "creator_a")
    a, b = world.batches["A"], world.batches["B"]
    tampered = [f"{world.connections['A'].slug}/{a.batch_id}", f"{world.connections['B'].slug}/{b.batch_id}"]

    confirm = client.get("/batches/cancel/", {"batch_id": tampered})
    done = client.post("/batches/cancel/", {"batch_id": tampered, "confirm": "yes"})

    says = f"“{world.connections['B'].slug}” is not a connection you may cancel batches on; nothing was cancelled."
    assert confirm.context["bulk_error"] == done.context["bulk_error"] == says
    assert done.context["results"] == []
    assert Batch.objects.filter(cancel_requested_at__isnull=False).count() == 0


def test_it_finds_nothing_of_another_connection_by_search_or_job(world):
    viewer_a, viewer_b = _client(world, "viewer_a"), _client(world, "viewer_b")
    b_batch = world.batches["B"]
    for query in ({"q": b_batch.batch_id}, {"q": b_batch.input_file_id}, {"job": b_batch.batch_id}):
        found = viewer_a.get("/batches/", query)
        assert found.context["total_matching"] == 0 and found.context["rows"] == [], query
        assert viewer_b.get("/batches/", query).context["total_matching"] == 1, query


def test_it_never_serves_one_scopes_cached_table_to_another(world, settings):
    settings.BATCHBOARD_REFRESH_INTERVAL = 5.0  # polls of one URL share a rendering for this long
    poll = {"HX-Request": "true"}

    seen_by_b = _client(world, "viewer_b").get("/batches/?sort=status", headers=poll)
    seen_by_a = _client(world, "viewer_a").get("/batches/?sort=status", headers=poll)

    assert world.batches["B"].batch_id in seen_by_b.content.decode()
    assert world.batches["B"].batch_id not in seen_by_a.content.decode()
    assert world.batches["A"].batch_id in seen_by_a.content.decode()


def test_it_exports_a_batchs_results_without_a_word_of_the_other_connection(world):
    client = _client(world, "viewer_a")
    a_id = world.batches["A"].batch_id
    for url in (
        f"/batches/{a_id}/results/export.csv",
        f"/batches/{a_id}/results/export.jsonl",
        f"/batches/{a_id}/final.csv",
        f"/batches/{a_id}/final.jsonl",
    ):
        response = client.get(url)
        body = b"".join(response.streaming_content).decode()
        assert response.status_code == 200 and "req-1" in body, url
        assert not any(batch_id in body for batch_id in _b_ids(world)), url


def test_it_answers_metrics_only_to_the_token(world, settings):
    settings.BATCHBOARD_METRICS_TOKEN = "matrix-metrics-token"
    for role in ROLES:
        response = _client(world, role).get("/metrics")
        assert response.status_code == 401, role  # a session, even a superuser's, is not the token
        assert not any(batch_id in response.content.decode() for batch_id in _b_ids(world))


def test_it_opens_a_share_link_for_anyone_with_it(world):
    token = world.share_tokens["B"]
    for role in ("anonymous", "viewer_a", "viewer_b"):
        client = _client(world, role)
        page = client.get(f"/shared/{token}/")
        assert page.status_code == 200 and world.batches["B"].batch_id in page.content.decode(), role
        assert client.get(f"/shared/{token}/results/").status_code == 200, role
        assert client.get(f"/shared/{token}/results/export.csv").status_code == 200, role


def test_it_shows_no_saved_view_of_another_connections_batch(world):
    """A user in both teams shares a results page of B's batch with team A: A's viewers do not see it (its name and
    address would name B's batch), B's do."""
    both = world.extra_users["both"]
    team_a = Group.objects.get(name="team-a-viewers")
    b_results = f"/batches/{world.batches['B'].batch_id}/results/"
    a_results = f"/batches/{world.batches['A'].batch_id}/results/"
    SavedView.objects.create(owner=both, name="B's results for A", url=b_results, team=team_a)
    SavedView.objects.create(owner=both, name="A's results for A", url=a_results, team=team_a)
    try:
        for page in ("/batches/", "/batches/views/"):
            html = _client(world, "viewer_a").get(page).content.decode()
            assert a_results in html and "A&#x27;s results for A" in html, page
            assert b_results not in html and "B&#x27;s results for A" not in html, page
            assert b_results in _client(world, "both").get(page).content.decode(), page
    finally:
        SavedView.objects.filter(owner=both).delete()


def test_it_shows_a_user_without_a_team_an_empty_list(world):
    client = _client(world, "no_team")
    response = client.get("/batches/")
    assert response.status_code == 200
    assert response.context["total_matching"] == 0 and response.context["rows"] == []
    assert client.get(f"/batches/{world.batches['A'].batch_id}/").status_code == 404
    assert access.connections(world.extra_users["no_team"]) == []


def test_it_shows_the_team_of_a_paused_connection_its_history(world):
    client = _client(world, "paused_team")
    batch_id = world.paused_batch.batch_id
    response = client.get("/batches/")
    assert [row.batch_id for row in response.context["rows"]] == [batch_id]
    assert client.get(f"/batches/{batch_id}/").status_code == 200
    assert client.get(f"/batches/{world.batches['A'].batch_id}/").status_code == 404


def test_it_shows_a_superuser_every_connection(world):
    response = _client(world, "superuser").get("/batches/")
    shown = {row.batch_id for row in response.context["rows"]}
    assert {world.batches["A"].batch_id, world.paused_batch.batch_id, *_b_ids(world)} <= shown


@pytest.mark.parametrize("backend", ["accounts.backends.LocalPasswordBackend", "accounts.backends.OidcBackend"])
def test_it_shows_an_inactive_user_nothing(world, backend):
    """A user switched off keeps no session, whether they signed in with a password or single sign-on, and is
    granted no connection even where a team of theirs is."""
    inactive = world.extra_users["inactive"]
    client = Client()
    client.force_login(inactive, backend=backend)
    response = client.get("/batches/")
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.get(f"/batches/{world.batches['A'].batch_id}/").status_code == 302
    assert access.connections(inactive) == [] and not access.visible_batches(inactive).exists()


def test_it_keeps_an_id_that_two_connections_share_apart(world):
    """A compatible provider may hand out an id another connection has: each viewer sees their own batch, its own
    retries, and the connection parameter opens nothing of the other's."""
    from batches.lineage_keys import LineageState

    twin_id, retry_id = "batch_twin" + "0" * 24, "batch_twinretry" + "0" * 19
    twins = [record_batch(completed(twin_id), connection=world.connections[side]) for side in SIDES]
    retry = record_batch(completed(retry_id), connection=world.connections["B"])
    Batch.objects.filter(pk=retry.pk).update(job=twin_id, retry_of=twin_id, lineage_state=LineageState.VERIFIED)
    try:
        retries = {
            role: {row.batch_id: row.retry_count for row in _client(world, role).get("/batches/").context["rows"]}
            for role in ("viewer_a", "viewer_b")
        }
        assert retries["viewer_a"][twin_id] == 0 and retry_id not in retries["viewer_a"]
        assert retries["viewer_b"][twin_id] == 1

        superuser = _client(world, "superuser")
        assert superuser.get(f"/batches/{twin_id}/").status_code == 300  # the page that links both
        assert superuser.get(f"/batches/{twin_id}/?connection=team-b").context["batch"].pk == twins[1].pk
        viewer_a = _client(world, "viewer_a")
        assert viewer_a.get(f"/batches/{twin_id}/").context["batch"].pk == twins[0].pk
        refused = viewer_a.get(f"/batches/{twin_id}/?connection=team-b")
        made_up = viewer_a.get(f"/batches/{MADE_UP_ID}/?connection=team-b")
        assert refused.status_code == made_up.status_code == 404
        assert _without_per_response_secrets(refused.content.decode().replace(twin_id, MADE_UP_ID)) == (
            _without_per_response_secrets(made_up.content.decode())
        )
    finally:
        Batch.objects.filter(batch_id__in=[twin_id, retry_id]).delete()


def test_it_offers_and_takes_only_the_connections_the_user_may_create_on(world):
    client = _client(world, "creator_a")
    assert "Team B" not in client.get("/batches/new/").content.decode()
    before = Batch.objects.count()

    response = client.post(
        "/batches/new/",
        {"connection": world.connections["B"].pk, "input_file_id": world.batches["B"].input_file_id, "token": "x"},
    )

    assert response.status_code == 200 and "connection" in response.context["form"].errors
    assert Batch.objects.count() == before
    superuser_form = _client(world, "superuser").get("/batches/new/").content.decode()
    assert "Team A" in superuser_form and "Team B" in superuser_form


def test_it_shows_on_a_batchs_page_only_the_activity_of_that_connections_batch(world):
    twin_id = "batch_twinactivity" + "0" * 16
    for side in SIDES:
        record_batch(completed(twin_id), connection=world.connections[side])
    try:
        made = _client(world, "viewer_b").post(f"/batches/{twin_id}/share-links/?connection=team-b", {"hours": "24"})
        assert made.status_code == 201
        page = _client(world, "viewer_a").get(f"/batches/{twin_id}/")
        assert page.status_code == 200 and "viewer-b" not in page.content.decode()
    finally:
        ShareLink.objects.filter(batch__batch_id=twin_id).delete()
        Batch.objects.filter(batch_id=twin_id).delete()
