"""Shared fixtures: plain static storage, a cache of each test's own, users with and without permissions, the sandbox
over real HTTP, a real redis-server, and the database-specific markers."""

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from functools import partial
from urllib.parse import quote

import pytest
import requests
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.servers.basehttp import WSGIRequestHandler
from django.db import connection, connections, transaction
from django.test import TransactionTestCase, override_settings
from django.utils import timezone
from whitenoise.middleware import WhiteNoiseMiddleware

from batches import services
from tests import template_db  # noqa: F401 (each xdist worker copies one migrated test database)

# The test server writes headers and body as separate small packets; with Nagle's algorithm on, every request on a
# kept-alive connection then waits ~40 ms for the client's delayed ACK.
WSGIRequestHandler.disable_nagle_algorithm = True
# Threads a test starts may leave a persistent PostgreSQL connection behind, which stops the test database from being
# dropped at the end; tests close every connection after use instead.
connections.settings["default"]["CONN_MAX_AGE"] = 0


# Django's test client builds the middleware anew for each test, and WhiteNoise's then lists and stats every static
# file through the finders (tens of milliseconds, a minute of CPU over the suite). The files do not change during a
# test session: WhiteNoise's table is built once per static-files configuration and copied into each new middleware.
_finder_tables: dict[str, dict] = {}
_add_files_from_finders = WhiteNoiseMiddleware.add_files_from_finders


def _add_files_from_finders_once(middleware):
    names = sorted(name for name in dir(django_settings) if name.startswith(("STATIC", "WHITENOISE_")))
    names += ["DEBUG", "FORCE_SCRIPT_NAME", "INSTALLED_APPS"]
    configuration = repr([(name, getattr(django_settings, name, None)) for name in names])
    if configuration not in _finder_tables:
        before = dict(middleware.files)
        _add_files_from_finders(middleware)
        _finder_tables[configuration] = {
            url: file for url, file in middleware.files.items() if before.get(url) is not file
        }
    middleware.files.update(_finder_tables[configuration])


WhiteNoiseMiddleware.add_files_from_finders = _add_files_from_finders_once


# After each transactional test (live servers, threads, processes) Django's `flush` empties every table, then its
# post_migrate signal writes back, for every app, the content types and permissions it has just deleted: 30-40 ms of
# queries, and on PostgreSQL a TRUNCATE of every table, 100-200 ms of the server's time (the PostgreSQL half runs
# hundreds of these tests). The content types and permissions a test left exactly as the test database was made are
# kept instead, every other table is emptied with DELETE, and post_migrate runs for the one app whose receivers write
# rows of their own (batches: the configured connections, the cache table): the same rows as after `flush`. A test
# that changed the kept tables gets Django's own flush.
_kept_tables: dict[str, dict[str, list]] = {}


def _kept_rows(alias: str) -> dict[str, list]:
    from django.contrib.contenttypes.models import ContentType

    columns = {ContentType: ("id", "app_label", "model"), Permission: ("id", "content_type_id", "codename", "name")}
    rows = {}
    with connections[alias].cursor() as cursor:
        for model, names in columns.items():
            cursor.execute(f"SELECT {', '.join(names)} FROM {model._meta.db_table} ORDER BY id")  # noqa: S608
            rows[model._meta.db_table] = cursor.fetchall()
    return rows


def _empty_database(alias: str) -> None:
    from django.apps import apps
    from django.core.management import call_command
    from django.db.models.signals import post_migrate

    database = connections[alias]
    if _kept_tables.get(alias) != _kept_rows(alias):
        call_command("flush", verbosity=0, interactive=False, database=alias, reset_sequences=False)
        _kept_tables[alias] = _kept_rows(alias)
        return
    tables = set(database.introspection.django_table_names(only_existing=True, include_views=False))
    with transaction.atomic(using=alias), database.cursor() as cursor:
        # Foreign keys are checked at the commit (Django makes them deferrable): the order of the DELETEs is free.
        for table in sorted(tables - set(_kept_tables[alias])):
            cursor.execute(f"DELETE FROM {database.ops.quote_name(table)}")  # noqa: S608
    batches = apps.get_app_config("batches")
    post_migrate.send(sender=batches, app_config=batches, verbosity=0, interactive=False, using=alias)


def _fixture_teardown(self):
    if self.available_apps is not None or self.serialized_rollback:
        return _django_fixture_teardown(self)
    for alias in self._databases_names(include_mirrors=False):
        _empty_database(alias)


_django_fixture_teardown = TransactionTestCase._fixture_teardown
TransactionTestCase._fixture_teardown = _fixture_teardown


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _cache_of_its_own(settings):
    """The shared cache (a database table or Redis) outlives a test's transaction: each test gets its own keys, and
    an empty memory of the list's renderings and running figures (kept per process, by keys that another test's data
    could repeat)."""
    from batches.list_figures import KEPT_HERE
    from batches.views.listing import TABLE_RENDERINGS

    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}
    TABLE_RENDERINGS.clear()
    KEPT_HERE.clear()


def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite on SQLite, then on PostgreSQL. `postgresql` tests run only on PostgreSQL, `sqlite`
    tests (SQLite's locking, WAL) only on SQLite. `once` tests are those no database can change (pure functions of
    their input, the API client and the sandbox's rules, settings read by a new process, every browser test, see
    tests/browser/conftest.py): they run in the SQLite half only, and are left out of any other run instead of
    repeated."""
    vendor = connection.vendor
    for item in items:
        for marker in ("postgresql", "sqlite"):
            if item.get_closest_marker(marker) and vendor != marker:
                item.add_marker(pytest.mark.skip(reason=f"{marker} only; this run is on {vendor}"))
    if vendor != "sqlite":
        once = [item for item in items if item.get_closest_marker("once")]
        config.hook.pytest_deselected(items=once)
        items[:] = [item for item in items if not item.get_closest_marker("once")]


def pytest_terminal_summary(terminalreporter):
    if connection.vendor != "sqlite":
        terminalreporter.write_line("Tests marked `once` were left out: they run in the SQLite half of `make test`.")


@pytest.fixture
def database_url(transactional_db):
    """The test database as a DATABASE_URL, for the processes a test starts (they see what it has committed)."""
    config = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{config['NAME']}"
    user, password = quote(config["USER"], safe=""), quote(config["PASSWORD"], safe="")
    return f"postgres://{user}:{password}@{config['HOST'] or 'localhost'}:{config['PORT'] or 5432}/{config['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server of this test session's own, on a free port, with nothing saved to disk."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server); `make test` installs it.")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    try:
        for _attempt in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def redis_cache(settings, redis_url):
    """The dashboard's cache on the real Redis, as REDIS_URL configures it."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        }
    }
    return redis_url


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing():
    """For the whole session, so that the users of a module's fixtures (the access tables' worlds) are made in
    microseconds too, not with a second of PBKDF2 each."""
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(autouse=True)
def _quiet_sandbox(settings, tmp_path):
    """Tests start with an empty sandbox (no demo seed), fast simulated time, files in a temporary folder, no
    injected faults unless a test asks (drawn from a seeded generator), and the sandbox's clock at the real time."""
    from sandbox import clock, views

    settings.SANDBOX_SEED = False
    settings.SANDBOX_SPEED = 3600.0
    settings.SANDBOX_FILES_DIR = tmp_path / "sandbox-files"
    settings.SANDBOX_LATENCY = 0.0
    settings.SANDBOX_ERROR_RATE = 0.0
    settings.SANDBOX_RATE_LIMIT_RATE = 0.0
    settings.BATCHBOARD_REFRESH_INTERVAL = 0.0
    views.fault_draws.seed(0)
    yield
    clock.reset()


@pytest.fixture
def sandbox_clock():
    """The sandbox's clock: `sandbox_clock.advance(seconds)` moves the sandbox forward instead of sleeping."""
    from sandbox import clock

    return clock


@pytest.fixture(autouse=True)
def _results_in_tmp(settings, tmp_path):
    """Results kept locally go to a temporary folder, never var/results."""
    settings.STORAGES = {
        **settings.STORAGES,
        "results": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "results"},
        },
    }


@pytest.fixture
def sandbox_url(live_server):
    """The sandbox API served by a real HTTP server; the dashboard's client is pointed at it."""
    url = f"{live_server.url}/sandbox/v1"
    with override_settings(OPENAI_BASE_URL=url, SANDBOX_URL=url):
        yield url


@pytest.fixture
def synced(db):
    """The sync loop is alive and its last pass succeeded just now (pages then show no notice)."""
    from django.utils import timezone

    from batches.freshness import LIST_STATE
    from batches.models import SyncState

    now = timezone.now()
    SyncState.objects.update_or_create(
        name=LIST_STATE, defaults={"succeeded_at": now, "heartbeat_at": now, "claimed_at": now}
    )


@pytest.fixture
def shared_renderings(settings, synced):
    """Polls of the list may share renderings for up to a minute (it refreshes at most once a minute), from an empty
    cache."""
    from django.core.cache import cache

    settings.BATCHBOARD_REFRESH_INTERVAL = 60.0
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def fake_api(settings):
    """A local API server that answers only what a test scripts (404 otherwise) and logs every request; the
    dashboard's client talks to it, without retries."""
    from tests.fake_api import FakeApi

    with FakeApi() as server:
        settings.OPENAI_BASE_URL = server.url
        settings.OPENAI_MAX_RETRIES = 0
        yield server


@pytest.fixture
def api(fake_api):
    """A fake Batch API on top of `fake_api`, holding the batches a test adds and counting cancels."""
    from tests.batch_api import BatchApi

    return BatchApi(fake_api)


def _user(django_user_model, username, *perms):
    user = django_user_model.objects.create_user(username=username, password="pw-" + username)
    if perms:
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="batches", codename__in=perms))
    return user


@pytest.fixture
def viewer(django_user_model):
    """A logged-in-able user who can look but not cancel or create."""
    return _user(django_user_model, "viewer")


@pytest.fixture
def operator(django_user_model):
    """A user who may cancel and create batches."""
    return _user(django_user_model, "operator", "cancel_batch", "create_batch")


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


class Processes:
    """Processes a test starts (servers, sync loops), each logging to a file, all killed when the test ends."""

    def __init__(self, directory):
        self.directory = directory
        self.running = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "w+b")  # noqa: SIM115 (closed at teardown)
        process = subprocess.Popen(
            command, env=env, cwd=django_settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process.log_path = self.directory / f"{name}.log"
        self.running.append((process, log))
        return process

    def output(self, process) -> str:
        return process.log_path.read_text(errors="replace")

    def stop_all(self) -> None:
        for process, _log in self.running:
            if process.poll() is None:
                process.terminate()
        for process, log in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        self.running = []


@pytest.fixture
def processes(tmp_path):
    started = Processes(tmp_path)
    yield started
    started.stop_all()


def wait_until_serving(url: str, timeout: float = 60) -> None:
    """Return once `url` answers over HTTP at all; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5, allow_redirects=False)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    pytest.fail(f"nothing answered at {url} within {timeout:g} s")


def process_environment(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a dashboard process a test starts: this test's database, the test session's secret key
    (so sessions made here are valid there), sandbox mode, and nothing of the caller's OPENAI_/SANDBOX_ settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    environment.pop("REDIS_URL", None)
    environment.update(
        DATABASE_URL=database_url,
        DJANGO_SECRET_KEY=django_settings.SECRET_KEY,
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        SANDBOX_SEED="false",
        PYTHONUNBUFFERED="1",
        # Static files from the finders, as in a fresh clone: never a manifest that a `collectstatic` of the working
        # tree (a benchmark, a try of the production commands) left in var/ and that newer templates outgrew.
        DJANGO_STATIC_ROOT=tempfile.mkdtemp(prefix="batchboard-static-"),
    )
    environment.update(extra)
    return environment


# Builders shared by several test modules (import them from here, never from another test module).


def read_cells(ok: int = 200, *, anonymous: int = 302) -> dict:
    """The access table's row for reading a batch (a page, or the API): its connection's viewers (and superusers)
    get `ok`; anyone else the 404 of an id that does not exist; the signed-out `anonymous` (the login redirect, or
    the API's 401)."""
    return {
        "anonymous": {"A": anonymous, "B": anonymous},
        "viewer_a": {"A": ok, "B": 404},
        "creator_a": {"A": ok, "B": 404},
        "viewer_b": {"A": 404, "B": ok},
        "superuser": {"A": ok, "B": ok},
    }


def act_cells(ok: int, *, anonymous: int = 302) -> dict:
    """The access table's row for an action on a batch (cancel, retry): a viewer is refused (403), a creator of A
    acts on A only, a batch the user may not see is a 404."""
    return {
        "anonymous": {"A": anonymous, "B": anonymous},
        "viewer_a": {"A": 403, "B": 404},
        "creator_a": {"A": ok, "B": 404},
        "viewer_b": {"A": 404, "B": 403},
        "superuser": {"A": ok, "B": ok},
    }


CREATED = 1_760_000_000


def observation(batch_id="batch_1", status="in_progress", processed=0, total=10, **fields):
    """A Batch as the API describes it, `processed` requests into its run (all of them successes)."""
    payload = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": CREATED,
        "in_progress_at": CREATED + 5 if status != "validating" else None,
        "expires_at": CREATED + 86_400,
        "completed_at": None,
        "request_counts": {"total": total, "completed": processed, "failed": 0},
        "metadata": {"description": "nightly eval"},
        **fields,
    }
    return services.ApiBatch.from_api(payload)


def completed(batch_id="batch_1", total=10, **fields):
    fields = {"output_file_id": "file-out", "finalizing_at": CREATED + 50, "completed_at": CREATED + 60, **fields}
    return observation(batch_id, "completed", processed=total, total=total, **fields)


def create_batches(count, *, speed=None):
    """`count` batches of one chat request each, created in the sandbox over HTTP as any client would; `speed`, if
    given, fixes how fast they run (the sandbox reads it at creation)."""
    if speed is not None:
        django_settings.SANDBOX_SPEED = speed
    client = services.get_client()
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]},
    }
    upload = client.upload_fileobj(io.BytesIO(json.dumps(line).encode() + b"\n"), filename="input.jsonl")
    return [client.create_batch(input_file_id=upload.id, endpoint="/v1/chat/completions") for _ in range(count)]


@pytest.fixture
def fresh_cache(settings):
    """Pages read the cache only: the list was refreshed just now and the interval is long; anything that still asks
    the API (the detail page's file sizes) fails at once instead of retrying. The loop is alive, and a viewer was
    noted "later" (a visit is noted at most once a second, with one UPDATE), so no request in a test writes the
    note and query counts compare like with like."""
    from batches.freshness import LIST_STATE
    from batches.models import SyncState

    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0
    now = timezone.now()
    SyncState.objects.create(
        name=LIST_STATE, claimed_at=now, succeeded_at=now, heartbeat_at=now, watched_at=now + timedelta(hours=1)
    )


# --- Batches with kept results, each line's outcome chosen ---------------------------

CHAT = "/v1/chat/completions"


def input_line(custom_id: str, n: int = 0) -> bytes:
    """An input line as people write them: spacing, key order and escapes vary, so only a byte copy keeps it."""
    if n % 3 == 0:
        return json.dumps(
            {
                "custom_id": custom_id,
                "method": "POST",
                "url": CHAT,
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"Grüße {custom_id} \u2014 n°{n}"}],
                },
            }
        ).encode()
    if n % 3 == 1:
        return (
            f'{{ "method":"POST",  "url":"{CHAT}", "custom_id":"{custom_id}",'
            f'"body":{{"messages":[{{"role":"user","content":"h\\u00e9 {n}"}}],'
            f'"model":"gpt-4o-mini", "max_tokens": 50}}}}'
        ).encode()
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": CHAT,
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Grüße {custom_id}"}]},
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def result_line(custom_id: str, outcome) -> bytes | None:
    """(file, line) for an outcome: "ok", an HTTP status, "expired", "cancelled", or a pair ("ok", the answer's text)
    or (an HTTP status, the error code), or the bytes of an output line; None for "missing"."""
    if isinstance(outcome, bytes):
        return "output", outcome
    if outcome == "missing":
        return None
    if outcome in ("expired", "cancelled"):
        code = f"batch_{outcome}"
        record = {"id": "r", "custom_id": custom_id, "response": None, "error": {"code": code, "message": outcome}}
        return "error", json.dumps(record).encode()
    outcome, detail = outcome if isinstance(outcome, tuple) else (outcome, None)
    status = 200 if outcome == "ok" else outcome
    if status == 200:
        body = {
            "object": "chat.completion",
            "choices": [{"message": {"content": detail or f"answer to {custom_id}"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        }
    else:
        code = detail or {429: "rate_limit_exceeded", 500: "server_error"}.get(status, "invalid_value")
        body = {"error": {"message": f"status {status}", "type": "x", "code": code}}
    record = {
        "id": "r",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": "q", "body": body},
        "error": None,
    }
    return ("output" if status == 200 else "error"), json.dumps(record).encode()


def keep_results(batch_id: str) -> str:
    """The background work's part, done by a test: the final batch's results are fetched and indexed (or found
    unavailable); returns the archive's state. Pages depend only on that state in the database, whoever keeps
    results in production."""
    from batches.models import Batch
    from results import archive
    from results.models import ResultArchive

    queue = TaskQueue()
    queue.commit_callbacks()  # recording it final asked for its results (BATCHBOARD_ARCHIVE=new)
    batch = Batch.objects.get(batch_id=batch_id)
    if archive.wants_archive(batch) and not ResultArchive.objects.filter(batch=batch).exists():
        archive.keep(batch)  # kept by itself in "all" mode only: the test asks, as opening its page would
    queue.drain()
    return ResultArchive.objects.get(batch=batch).state


def kept_batch(outcomes: dict[str, object], tmp_path, *, metadata=None, created_at=None, lines=None):
    """A completed batch whose input, output and error files are kept and indexed, each line with its outcome.
    `lines` gives the input line of some custom_ids (e.g. a parent's, byte for byte); the others are made up."""
    from batches import services
    from batches.models import record_batch
    from results import archive
    from results.events import results_kept
    from results.models import ArchiveState, ResultArchive
    from tests.batch_api import payload

    files = {"input": [], "output": [], "error": []}
    for n, (custom_id, outcome) in enumerate(outcomes.items()):
        files["input"].append((lines or {}).get(custom_id) or input_line(custom_id, n))
        if (answer := result_line(custom_id, outcome)) is not None:
            files[answer[0]].append(answer[1])
    fields = {"metadata": metadata or {}, "input_file_id": f"file-in{uuid.uuid4().hex[:8]}", "endpoint": CHAT}
    if created_at is not None:
        fields["created_at"] = created_at
    batch = record_batch(services.ApiBatch.from_api(payload("completed", **fields)))
    # Recording it final may have asked for its results already (BATCHBOARD_ARCHIVE=new): this builds them instead.
    kept, _ = ResultArchive.objects.update_or_create(batch=batch, defaults={"state": ArchiveState.ARCHIVING})
    local, names, stored_bytes = {}, {}, 0
    for kind, lines in files.items():
        if kind != "input" and not lines:
            continue
        content = b"".join(line + b"\n" for line in lines)
        path = tmp_path / f"{batch.batch_id}-{kind}.jsonl"
        path.write_bytes(content)
        local[kind] = str(path)
        stored_bytes += len(content)
        names[f"{kind}_name"] = archive.results_storage().save(f"{batch.batch_id}/{kind}.jsonl", ContentFile(content))
    with transaction.atomic():
        summary = archive._index(kept, local)
    ResultArchive.objects.filter(pk=kept.pk).update(
        state=ArchiveState.READY, archived_at=timezone.now(), summary=summary, stored_bytes=stored_bytes, **names
    )
    transaction.on_commit(partial(results_kept.send, sender=ResultArchive, batch_pk=batch.pk, batch_id=batch.batch_id))
    return batch


def kept_retry(parent, outcomes: dict[str, object], tmp_path, *, job=None, attempt=None, created_at=None):
    """A kept retry of `parent`, made elsewhere: the parent's input lines of these custom_ids byte for byte, the
    metadata naming parent and job (the parent's job by default), then its link checked as a worker would."""
    from batches.models import Batch
    from results.archive import StoredFiles
    from results.models import ResultArchive, ResultLine
    from retries import verify

    parent_archive = ResultArchive.objects.get(batch=parent)
    with StoredFiles(parent_archive) as files:
        lines = {
            line.custom_id: files.input_bytes(line)
            for line in ResultLine.objects.filter(archive=parent_archive, custom_id__in=list(outcomes)).input_lines()
        }
    metadata = {"batchboard_retry_of": parent.batch_id, "batchboard_job": job or parent.job_id}
    if attempt is not None:
        metadata["batchboard_attempt"] = str(attempt)
    child = kept_batch(outcomes, tmp_path, metadata=metadata, created_at=created_at, lines=lines)
    verify.verify(child)
    return Batch.objects.get(pk=child.pk)


# --- Background tasks (django.tasks on django-tasks-db, the project's own database) --------------------------------


class TaskQueue:
    """The test database's task queue, drained on demand by the real django-tasks-db worker, in this thread.

    In a test inside a transaction nothing commits, so callbacks waiting for a commit (the recording function's
    events, a reaction's enqueue) never run by themselves: `drain()` runs them first, as a commit would, then every
    ready task, then what those tasks left for their own commit, until nothing is left.
    """

    def __init__(self):
        from django_tasks_db.management.commands.db_worker import Worker

        self.worker = Worker(
            queue_names=["*"],
            interval=0,
            batch=True,
            backend_name="default",
            startup_delay=False,
            max_tasks=None,
            worker_id="test-worker",
            excluded_queue_names=[],
        )

    def commit_callbacks(self) -> int:
        """Run the callbacks waiting for a commit that no earlier call ran (the count lives on the connection, reset
        for each test, so that any number of queues in one test agree)."""
        ran = 0
        while len(connection.run_on_commit) > connection.test_callbacks_run:
            _savepoints, callback, _robust = connection.run_on_commit[connection.test_callbacks_run]
            connection.test_callbacks_run += 1
            callback()
            ran += 1
        return ran

    def drain(self, *, expect_failures: bool = False) -> int:
        """Run everything that is due; how many tasks ran. A task that crashed fails the test, unless expected."""
        from django_tasks_db.models import DBTaskResult

        ran = 0
        while True:
            self.commit_callbacks()
            queued = DBTaskResult.objects.ready().first()
            if queued is None:
                return ran
            queued.claim(self.worker.worker_id)
            self.worker.run_task(queued)
            queued.refresh_from_db()
            if queued.status == "FAILED" and not expect_failures:
                pytest.fail(f"task {queued.task_path} crashed:\n{queued.traceback}")
            ran += 1

    def waiting(self) -> int:
        """Tasks on the queue, due or not."""
        from django_tasks_db.models import DBTaskResult

        self.commit_callbacks()
        return DBTaskResult.objects.filter(status="READY").count()

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass for what waits on the queue: delayed tasks and reactions waiting for a retry come due
        that much sooner (instead of the test sleeping on the real clock)."""
        from django.db.models import F
        from django_tasks_db.models import DBTaskResult, get_date_max

        from batches.models import Reaction

        self.commit_callbacks()
        delta = timedelta(seconds=seconds)
        DBTaskResult.objects.filter(status="READY").exclude(run_after=get_date_max()).update(
            run_after=F("run_after") - delta
        )
        Reaction.objects.filter(state="pending").update(run_after=F("run_after") - delta)


@pytest.fixture(autouse=True)
def _no_commit_callbacks_run_yet():
    """Each test starts with no callback waiting for a commit (the previous test's transaction was rolled back)."""
    connection.test_callbacks_run = 0


@pytest.fixture
def tasks(db):
    """The task queue, drained by `tasks.drain()` (the real db_worker's code, in this thread)."""
    return TaskQueue()


class TaskWorkerThread(threading.Thread):
    """The real db_worker loop in a thread, for tests with a live server or a browser: tasks run as they would in
    production, seconds after they are enqueued."""

    def __init__(self, interval: float = 0.05):
        from django_tasks_db.management.commands.db_worker import Worker

        super().__init__(name="test-task-worker", daemon=True)
        self.worker = Worker(
            queue_names=["*"],
            interval=interval,
            batch=False,
            backend_name="default",
            startup_delay=False,
            max_tasks=None,
            worker_id=f"test-thread-{uuid.uuid4().hex[:8]}",
            excluded_queue_names=[],
        )

    def run(self):
        try:
            self.worker.run()
        finally:
            connections.close_all()

    def stop(self):
        self.worker.running = False
        self.join(timeout=30)


@pytest.fixture
def task_worker(transactional_db):
    """A db_worker running in a thread for the test's duration (live servers, browsers, sync loops in threads)."""
    worker = TaskWorkerThread()
    worker.start()
    yield worker
    worker.stop()


# --- Single sign-on: a real OpenID provider (oidc-provider-mock) -------------------------


class OidcProvider:
    """oidc-provider-mock served on a free port in a thread: `add_user(sub, **claims)` registers who may sign in
    (its authorization page then signs them in with one click on their subject)."""

    def __init__(self, url: str):
        self.url = url

    def add_user(self, sub: str, **claims) -> str:
        response = requests.put(f"{self.url}/users/{quote(sub, safe='')}", json=claims, timeout=10)
        response.raise_for_status()
        return sub


@pytest.fixture(scope="session")
def oidc_provider():
    """One OpenID provider for the test session (users are added per test, under subjects of their own)."""
    from oidc_provider_mock import run_server_in_thread

    # The provider refuses plain http unless told it is a test (authlib's switch).
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
    with run_server_in_thread(port=0, require_nonce=True) as server:
        yield OidcProvider(f"http://localhost:{server.server_port}")


@pytest.fixture
def sso(settings, oidc_provider):
    """Single sign-on configured against `oidc_provider`, endpoints from its discovery document."""
    settings.BATCHBOARD_OIDC_ENABLED = True
    settings.BATCHBOARD_OIDC_CLIENT_ID = "batchboard"
    settings.BATCHBOARD_OIDC_CLIENT_SECRET = "client-secret-never-shown"
    settings.BATCHBOARD_OIDC_ISSUER = oidc_provider.url
    settings.BATCHBOARD_OIDC_ENDPOINTS = {}
    settings.BATCHBOARD_OIDC_NAME = "Example SSO"
    settings.BATCHBOARD_OIDC_REQUIRED_GROUPS = []
    return oidc_provider
