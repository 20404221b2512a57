"""Browser fixtures: Debian's Chromium driven by Playwright against the live test server and its sandbox."""

import io
import json
import os
import shutil
import threading
import time
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.core.signals import request_finished, request_started

from batches import services
from batches.models import Batch

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CHAT_ENDPOINT = "/v1/chat/completions"
# A batch's simulated life (validating, running, finalizing) is about 3,600 simulated seconds; at SANDBOX_SPEED
# 3600 / N it takes about N real seconds (±15 %, varied per batch).
SIMULATED_LIFETIME = 3600.0


# Run before tests/conftest.py's hook, which leaves `once` tests out of the PostgreSQL half.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Every browser test is `once`: what a browser adds to the view tests (the page's scripts, polling, swaps, dialogs,
    layout and what axe finds) no database can change, and the server's answers it relies on are tested on both
    databases by the view tests (tests/views/). Chromium is the heaviest part of the suite."""
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.once)


def chat_request(custom_id: str, model: str = "gpt-4o-mini") -> dict:
    """One line of a chat-completions batch input file."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT_ENDPOINT,
        "body": {"model": model, "messages": [{"role": "user", "content": f"Say hello to {custom_id}."}]},
    }


def jsonl(lines) -> bytes:
    """A JSONL file from dicts (encoded) and strings (kept as they are, to write broken lines)."""
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def speed_for(real_seconds: float) -> float:
    """The SANDBOX_SPEED at which a batch lives for about `real_seconds`."""
    return SIMULATED_LIFETIME / real_seconds


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium); `make test` installs it.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, sandbox_url):
    """Open pages in fresh browser contexts (options as for browser.new_context); each fails the test on errors."""
    opened = []

    def _new_page(**options):
        context = browser.new_context(**{"viewport": DESKTOP, **options})
        context.set_default_timeout(15_000)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        opened.append((context, errors))
        return page

    yield _new_page
    for context, _errors in opened:
        context.close()
    _in_flight.wait_for_none()
    # A CSP violation or a JavaScript exception is a bug even when the test's own assertions passed.
    errors = [error for _context, errors in opened for error in errors]
    assert not errors, f"browser errors: {errors}"


class _RequestsInFlight:
    """The threads of this process inside a request (the live server's handlers), by Django's request signals."""

    def __init__(self):
        self.threads: dict[int, threading.Thread] = {}
        self.lock = threading.Lock()

    def started(self, **kwargs):
        with self.lock:
            self.threads[threading.get_ident()] = threading.current_thread()

    def finished(self, **kwargs):
        with self.lock:
            self.threads.pop(threading.get_ident(), None)

    def wait_for_none(self, timeout: float = 15.0) -> None:
        """Let the live server finish the requests a closed page left behind (a poll in flight): one still reading
        the database while the test's teardown empties it deadlocks on PostgreSQL (TRUNCATE against its locks).
        The test's own thread (the test client's unclosed responses) and threads gone are not waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                busy = [t for t in self.threads.values() if t.is_alive() and t is not threading.current_thread()]
            if not busy:
                return
            time.sleep(0.02)


_in_flight = _RequestsInFlight()
request_started.connect(_in_flight.started, weak=False, dispatch_uid="browser-tests-requests-started")
request_finished.connect(_in_flight.finished, weak=False, dispatch_uid="browser-tests-requests-finished")


@pytest.fixture
def page(new_page):
    """A fresh browser page; the dashboard under test talks to the sandbox over real HTTP."""
    return new_page()


def log_in(page, user, password=None):
    """Fill in and submit the real login form on the page that shows it."""
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(password or "pw-" + user.username)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture
def login(live_server, page):
    """Log a user in through the real login form."""

    def _login(user, password=None):
        page.goto(f"{live_server.url}/accounts/login/")
        log_in(page, user, password)
        page.wait_for_url("**/batches/**")
        return page

    return _login


@pytest.fixture
def sync_loop(sandbox_url, settings):
    """The sync loop in a thread, as `make run` runs it (pages never call the API for the list themselves), passing
    every half second whether or not anyone watches."""
    from django.db import connections

    from batches import sync

    settings.BATCHBOARD_HISTORY_INTERVAL = 0.5
    settings.BATCHBOARD_UPSTREAM_BUDGET = 100_000  # two passes a second would spend the default 120 a minute
    stop = threading.Event()

    def run():
        try:
            sync.sync_loop(stop, wake_every=0.2)
        finally:
            connections.close_all()

    loop = threading.Thread(target=run, name="browser-tests-sync-loop", daemon=True)
    loop.start()
    yield
    stop.set()
    loop.join(timeout=30)
    assert not loop.is_alive(), "the sync loop did not stop: it would go on spending the next test's budget"


def sandbox_client() -> services.BatchClient:
    """A client of the sandbox as any other program has one (the SDK, a script): it spends none of batchboard's
    upstream budget, so setting the scene never depends on what the sync loop and the pages have spent."""
    return services.BatchClient(api_key=django_settings.SANDBOX_API_KEY, base_url=django_settings.OPENAI_BASE_URL)


@pytest.fixture
def make_batch(sandbox_url, settings, sync_loop):
    """Create a batch in the sandbox over HTTP, as any API client would (sandbox_client); it runs at `speed` from
    then on."""

    def _make(speed: float, *, requests: int = 20, scenario: str = "") -> services.ApiBatch:
        settings.SANDBOX_SPEED = speed  # the sandbox keeps the speed in force at creation for the batch's life
        client = sandbox_client()
        lines = [chat_request(f"request-{number}") for number in range(1, requests + 1)]
        uploaded = client.upload_fileobj(io.BytesIO(jsonl(lines)), filename="input.jsonl")
        metadata = {"sandbox_scenario": scenario} if scenario else None
        created = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT, metadata=metadata)
        wait_until_recorded(created.id)
        return created

    return _make


def long_running(make_batch) -> services.ApiBatch:
    """A batch in progress for about half a minute: longer than any test, and cancellable all along; recorded in
    progress already, so the first page shows it so."""
    batch = make_batch(2000, scenario="slow")
    wait_until_recorded(batch.id, "in_progress")
    return batch


def wait_until_recorded(batch_id: str, status: str = "") -> None:
    """Pages read the cache: wait for the sync loop to have recorded the batch (in `status`, if given), as a viewer
    would see it."""
    recorded = Batch.objects.filter(batch_id=batch_id, **({"status": status} if status else {}))
    deadline = time.monotonic() + 20
    while not recorded.exists():
        if time.monotonic() > deadline:
            seen = Batch.objects.filter(batch_id=batch_id).values_list("status", flat=True).first()
            pytest.fail(f"the sync loop has not recorded {batch_id} {status} within 20 s (recorded: {seen})")
        time.sleep(0.05)


@pytest.fixture
def sandbox_requests():
    """(method, path) of every request the sandbox API receives during the test, whoever sends it."""
    seen = []
    lock = threading.Lock()

    def _record(sender, environ=None, **kwargs):
        path = (environ or {}).get("PATH_INFO", "")
        if path.startswith("/sandbox/v1/"):
            with lock:
                seen.append((environ["REQUEST_METHOD"], path))

    request_started.connect(_record, weak=False, dispatch_uid="browser-tests-sandbox-requests")
    yield seen
    request_started.disconnect(dispatch_uid="browser-tests-sandbox-requests")


def watch_live_requests(page, path: str) -> list:
    """The htmx GETs the page makes to `path` (its live fragment's URL), collected as they start."""
    seen = []

    def _record(request):
        if request.method == "GET" and request.headers.get("hx-request") and urlsplit(request.url).path == path:
            seen.append(request)

    page.on("request", _record)
    return seen


def is_live_response(path: str):
    """A predicate for page.expect_response: the answer to a live refresh of `path`."""

    def _matches(response):
        request = response.request
        return request.method == "GET" and request.headers.get("hx-request") and urlsplit(response.url).path == path

    return _matches


def network_barrier(page, live_server_url: str) -> None:
    """Return once every request the page started before this call has been reported to Playwright.

    The page fetches a static file and Playwright sees that request start; requests start in order, so any live
    refresh fired before (e.g. by a timer that ran during clock.fast_forward) has been reported by then.
    """
    url = f"{live_server_url}/static/img/favicon.svg?barrier"
    with page.expect_request(url):
        page.evaluate("url => fetch(url).then(response => response.status)", url)
