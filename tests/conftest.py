"""Shared fixtures: plain static storage, users with and without permissions, the sandbox over real HTTP."""

import pytest
from django.contrib.auth.models import Permission
from django.core.servers.basehttp import WSGIRequestHandler
from django.test import override_settings

# The test server writes headers and body as separate small packets; with Nagle's algorithm on, every request on a
# kept-alive connection then waits ~40 ms for the client's delayed ACK.
WSGIRequestHandler.disable_nagle_algorithm = True


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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

    from batches.models import SyncState
    from batches.sync import LIST_STATE

    now = timezone.now()
    SyncState.objects.update_or_create(
        name=LIST_STATE, defaults={"succeeded_at": now, "heartbeat_at": now, "claimed_at": now}
    )


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
