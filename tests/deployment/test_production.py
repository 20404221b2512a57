"""The production setup for real: gunicorn with 3 workers and two sync loops on PostgreSQL and Redis, against the
sandbox served by a server of its own, with viewers polling, users cancelling and creating, and a worker and a loop
killed halfway.

The sandbox's access log is the upstream's record of every call the dashboard made.
"""

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest
import requests
from django.contrib.auth.models import Permission
from django.db.models import Count
from django.test import Client

from batches.models import Batch, BatchSnapshot
from tests.conftest import free_port, process_environment, wait_until_serving

pytestmark = pytest.mark.postgresql

GUNICORN = [sys.executable, "-m", "gunicorn", "dashboard.wsgi"]
MANAGE = [sys.executable, "manage.py"]
ACCESS_LOG_FORMAT = "%(m)s %(U)s ?%(q)s %(s)s %(a)s"
ACCESS_LINE = re.compile(r"^(?P<method>[A-Z]+) (?P<path>/\S*) \?(?P<query>\S*) (?P<status>\d{3}) (?P<agent>.*)$")
INTERVAL = 2.0  # the refresh interval of the web workers and of both sync loops
LOAD_SECONDS = 30.0
VIEWERS = 20
# At this speed a batch's simulated life (about 3,600 s) takes about 10 real seconds.
SANDBOX_SPEED = "360"
CHAT = "/v1/chat/completions"


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _user(django_user_model, username, *perms):
    user = django_user_model.objects.create_user(username=username, password="unused")
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="batches", codename__in=perms))
    return user


def _jsonl(count: int) -> bytes:
    lines = [
        {
            "custom_id": f"request-{n}",
            "method": "POST",
            "url": CHAT,
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Hello {n}"}]},
        }
        for n in range(count)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _access_log(path) -> list[dict]:
    """The calls the dashboard made (its client says so in User-Agent), not the test's own look at the sandbox."""
    calls = []
    for line in path.read_text(errors="replace").splitlines():
        if (match := ACCESS_LINE.match(line.strip())) and match["agent"].startswith("batchboard/"):
            calls.append(match.groupdict())
    return calls


class Browser:
    """One logged-in person with a requests session; every answer's status (or failure to answer) is kept."""

    def __init__(self, base_url: str, cookie: str):
        self.base_url = base_url
        self.session = requests.Session()
        self.session.cookies.set("sessionid", cookie, domain="127.0.0.1")
        self.statuses: list[tuple[str, int]] = []
        self.failures: list[str] = []

    def request(self, method: str, path: str, **kwargs) -> requests.Response | None:
        try:
            response = self.session.request(method, self.base_url + path, timeout=60, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            self.failures.append(f"{method} {path}: {exc}")
            return None
        self.statuses.append((f"{method} {path}", response.status_code))
        return response

    def csrf_headers(self) -> dict[str, str]:
        if "csrftoken" not in self.session.cookies:
            self.request("GET", "/batches/new/")
        return {"X-CSRFToken": self.session.cookies.get("csrftoken", ""), "Referer": self.base_url + "/batches/"}


def _viewer(browser: Browser, batch_ids: list[str], stop: threading.Event, seed: int) -> None:
    """Polls the list's fragment and a running batch's detail, and sometimes loads a whole page, as a tab would."""
    rng = random.Random(seed)
    stop.wait(rng.uniform(0, INTERVAL))
    while not stop.is_set():
        batch_id = rng.choice(batch_ids)
        choice = rng.random()
        if choice < 0.45:
            browser.request("GET", "/batches/", headers={"HX-Request": "true"})
        elif choice < 0.85:
            browser.request("GET", f"/batches/{batch_id}/", headers={"HX-Request": "true"})
        elif choice < 0.95:
            browser.request("GET", f"/batches/{batch_id}/")
        else:
            browser.request("GET", "/batches/?status=active")
        stop.wait(rng.uniform(0.5 * INTERVAL, 1.5 * INTERVAL))


def _create(browser: Browser, lines: int) -> str | None:
    """Submit the create form with a JSONL upload; the new batch's id, from where the dashboard sends the user."""
    data = {"endpoint": CHAT, "completion_window": "24h", "output_expiry_unit": "days", "token": str(uuid.uuid4())}
    files = {"input_file": ("input.jsonl", io.BytesIO(_jsonl(lines)), "application/jsonl")}
    response = browser.request("POST", "/batches/new/", data=data, files=files, headers=browser.csrf_headers())
    if response is None or response.status_code != 303:
        return None
    return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]


def _cancel_twice_at_once(first: Browser, second: Browser, batch_id: str) -> None:
    """Two people click cancel on the same batch at the same moment (on whichever workers they land)."""
    start = threading.Barrier(2)

    def click(browser):
        headers = browser.csrf_headers()
        start.wait()
        browser.request("POST", f"/batches/{batch_id}/cancel/", headers=headers)

    threads = [threading.Thread(target=click, args=(browser,)) for browser in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def _sandbox_batches(sandbox_url: str) -> dict[str, dict]:
    response = requests.get(
        f"{sandbox_url}/batches", params={"limit": 100}, headers={"Authorization": "Bearer sk-sandbox"}, timeout=30
    )
    response.raise_for_status()
    return {batch["id"]: batch for batch in response.json()["data"]}


def _wait_until_every_final_state_is_recorded(sandbox_url: str, timeout: float) -> dict[str, dict]:
    """The sandbox's batches once all are final and the dashboard's cache holds exactly their final state."""
    deadline = time.monotonic() + timeout
    while True:
        upstream = _sandbox_batches(sandbox_url)
        recorded = dict(Batch.objects.values_list("batch_id", "payload"))
        if all(batch["status"] in ("completed", "failed", "expired", "cancelled") for batch in upstream.values()) and (
            recorded == upstream
        ):
            return upstream
        if time.monotonic() > deadline:
            unfinished = {i: b["status"] for i, b in upstream.items() if recorded.get(i) != b}
            pytest.fail(f"final states not recorded within {timeout:g} s: {unfinished}")
        time.sleep(1)


def test_three_workers_and_two_sync_loops_share_the_work_and_survive_a_kill(
    database_url, redis_url, django_user_model, processes
):
    sandbox_port, web_port = free_port(), free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}/sandbox/v1"
    environment = process_environment(
        database_url,
        REDIS_URL=redis_url,
        SANDBOX_URL=sandbox_url,
        SANDBOX_SPEED=SANDBOX_SPEED,
        SANDBOX_FILES_DIR=str(processes.directory / "sandbox-files"),
        BATCHBOARD_REFRESH_INTERVAL=str(INTERVAL),
        OPENAI_MAX_RETRIES="0",
        # Twenty viewers of a dozen running batches would spend the default 120 calls a minute in half a minute, and
        # a cancel refused by the budget sends no call; the budget has tests of its own (tests/services/test_budget.py).
        BATCHBOARD_UPSTREAM_BUDGET="5000",
    )
    upstream_log = processes.directory / "upstream-access.log"
    processes.start(
        "sandbox",
        [
            *GUNICORN,
            *("--bind", f"127.0.0.1:{sandbox_port}", "--workers", "1", "--threads", "16"),
            *("--access-logfile", str(upstream_log), "--access-logformat", ACCESS_LOG_FORMAT),
        ],
        environment,
    )
    web = processes.start(
        "web", [*GUNICORN, "--bind", f"127.0.0.1:{web_port}", "--workers", "3", "--threads", "4"], environment
    )
    wait_until_serving(f"{sandbox_url}/batches")
    wait_until_serving(f"http://127.0.0.1:{web_port}/accounts/login/")

    viewer = _user(django_user_model, "viewer")
    operators = [_user(django_user_model, f"operator{n}", "cancel_batch", "create_batch") for n in range(2)]
    base_url = f"http://127.0.0.1:{web_port}"
    began = time.monotonic()
    alice, bob = (Browser(base_url, _session_cookie(user)) for user in operators)
    batch_ids = [batch_id for batch_id in (_create(alice, 5) for _ in range(6)) if batch_id]
    assert len(batch_ids) == 6, alice.statuses

    loop = [*MANAGE, "sync_batches", "--loop", "--interval", str(INTERVAL)]
    loops = [processes.start(f"loop{n}", loop, environment) for n in range(2)]
    viewers = [Browser(base_url, _session_cookie(viewer)) for _ in range(VIEWERS)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_viewer, args=(browser, batch_ids, stop, seed)) for seed, browser in enumerate(viewers)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    cancelled, created, killed_at = [], [], None
    survivor_log_offset = 0
    while time.monotonic() - started < LOAD_SECONDS:
        time.sleep(2.5)
        running = Batch.objects.active().exclude(batch_id__in=cancelled).values_list("batch_id", flat=True)
        if len(created) <= len(cancelled) and (batch_id := _create(alice, 3)):
            created.append(batch_id)
            batch_ids.append(batch_id)  # viewers pick it up from now on
        elif running:
            batch_id = running[0]  # the newest
            _cancel_twice_at_once(alice, bob, batch_id)
            cancelled.append(batch_id)
        if killed_at is None and time.monotonic() - started >= LOAD_SECONDS / 2:
            workers = _children(web.pid)
            assert len(workers) == 3
            os.kill(workers[0], signal.SIGKILL)
            loops[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            survivor_log_offset = len(processes.output(loops[1]))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    final = _wait_until_every_final_state_is_recorded(sandbox_url, timeout=150)  # a killed loop's lease lasts 60 s

    # No 5xx, from the dashboard or the sandbox; only requests on the killed worker went unanswered.
    everyone = [*viewers, alice, bob]
    statuses = [status for browser in everyone for status in browser.statuses]
    assert [entry for entry in statuses if entry[1] >= 500] == []
    assert len(statuses) > VIEWERS * LOAD_SECONDS / (4 * INTERVAL)  # the load happened, even on a busy machine
    failures = [failure for browser in everyone for failure in browser.failures]
    assert len(failures) <= 4 * 3, failures  # at most what the killed worker's threads had in flight
    calls = _access_log(upstream_log)
    assert [call for call in calls if int(call["status"]) >= 500] == []

    # The killed worker was replaced and the other loop took the lease over.
    assert len(_children(web.pid)) == 3
    assert loops[1].poll() is None
    after_kill = processes.output(loops[1])[survivor_log_offset:]
    assert "sync pass:" in after_kill, after_kill

    # Exactly one upstream cancel per cancelled batch, however many clicks and workers.
    cancels = Counter(call["path"].split("/")[-2] for call in calls if call["path"].endswith("/cancel"))
    assert cancelled and cancels == dict.fromkeys(cancelled, 1)
    for batch_id in cancelled:
        assert final[batch_id]["status"] in ("cancelled", "completed")  # it may have finished first

    # At most one list walk per interval across both loops and every viewer: a walk starts with the first page.
    walks = [c for c in calls if c["method"] == "GET" and c["path"].endswith("/batches") and "after=" not in c["query"]]
    assert 1 <= len(walks) <= (time.monotonic() - began) / INTERVAL + 1

    # No duplicate snapshot, and each batch's history ends with the final state the API reports.
    duplicates = BatchSnapshot.objects.values("batch", "payload_hash").annotate(n=Count("id")).filter(n__gt=1)
    assert list(duplicates) == []
    assert set(final) == set(batch_ids)
    for batch in Batch.objects.all():
        last = batch.snapshots.order_by("observed_at", "id").last()
        assert last.payload == final[batch.batch_id]
        processed = list(batch.snapshots.order_by("observed_at", "id").values_list("completed_requests", flat=True))
        assert processed == sorted(processed)
    assert killed_at is not None
