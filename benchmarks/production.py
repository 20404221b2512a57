"""The production setup measured: pages over 100,000 batches on PostgreSQL beside SQLite, and 50 viewers polling
3 gunicorn workers on PostgreSQL with Redis.

`python -m benchmarks.production [--batches 100000] [--requests 30] [--viewers 50] [--seconds 30] [--pages-only]`

Pages: for each database a child process fills a scratch database (a SQLite file in a temporary folder; a throwaway
PostgreSQL cluster from pg_virtualenv) with --batches batches (1 % of them running) and one snapshot each, then times
the list, its polled fragment (after one running batch moved on, as between two polls; with the cache emptied; and
served from the shared rendering) and a running batch's detail in-process with Django's test client, the cache fresh
so no request calls upstream: once with the default cache (the database table, as without REDIS_URL), once with a
redis-server of the parent's, as in production. `--pages-only` stops there. Load: in a throwaway PostgreSQL
cluster beside a redis-server of its own, gunicorn serves the dashboard with 3 workers, another gunicorn serves the
sandbox (its access log counts upstream calls), one sync loop runs as in production, and --viewers viewers poll the
table fragment every interval for --seconds seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common

ROOT = common.ROOT
TARGETS_MS = {
    "list": 25.0,
    "fragment (after a change)": 10.0,
    "  the same, no sync pass": 10.0,
    "fragment (cold cache)": 10.0,
    "fragment (shared)": 10.0,
    "detail (running)": 25.0,
}
# What a page computes afresh when it misses, printed with the figures that missed.
WHAT_IT_RECOMPUTES = {
    "fragment (after a change)": "a batch moved on: the page's 50 rows and their retries, and the changed row's "
    "rendering",
    "  the same, no sync pass": "a batch moved on: the running batches' figures and spend, the page's 50 rows and "
    "their retries, and the changed row's rendering",
    "fragment (cold cache)": "as after a change, and the figures of every final batch, the day's finished ones and "
    "spend: once each time a batch becomes final, for every viewer, unless the sync pass that made it final did",
}
INTERVAL = 2.0
RUNNING_SHARE = 100  # one batch in this many is running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.production", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100_000, help="Batches in the cache (default: 100000).")
    parser.add_argument("--requests", type=int, default=30, help="Timed requests per page (default: 30).")
    parser.add_argument("--viewers", type=int, default=50, help="Viewers polling gunicorn (default: 50).")
    parser.add_argument("--seconds", type=float, default=30.0, help="How long they poll (default: 30).")
    parser.add_argument("--pages-only", action="store_true", help="Time the pages only, without the load test.")
    parser.add_argument("--child", choices=["pages", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--redis", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "pages":
        print(json.dumps(_measure_pages(args.batches, args.requests, args.redis)))
        return 0
    if args.child == "load":
        print(json.dumps(_measure_load(args.viewers, args.seconds)))
        return 0
    return _run(args)


# --- The parent: runs each measurement in its own process and database, prints the figures side by side ---------


def _run(args) -> int:
    if shutil.which("pg_virtualenv") is None or shutil.which("redis-server") is None:
        print("This benchmark needs postgresql and redis-server: run `make bench`, which installs them.")
        return 1
    own = [sys.executable, "-m", "benchmarks.production"]
    redis_port = _free_port()
    # Each child times the pages twice: with the default cache (the database table, as without REDIS_URL), then
    # with Redis, as in production.
    pages_args = [
        *("--child", "pages", "--batches", str(args.batches), "--requests", str(args.requests)),
        *("--redis", f"redis://127.0.0.1:{redis_port}/0"),
    ]
    print(f"Filling a scratch SQLite database and a throwaway PostgreSQL cluster with {args.batches:,} batches each...")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        with tempfile.TemporaryDirectory(prefix="batchboard-bench-") as scratch:
            sqlite = common.run_child([*own, *pages_args], {"DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3"})
        postgresql = common.run_child(common.in_postgresql([*own, *pages_args]), {})
    finally:
        redis.terminate()
        redis.wait(timeout=30)
    for cache_name in ("database", "redis"):
        _print_pages(args, cache_name, sqlite[cache_name], postgresql[cache_name])
    if args.pages_only:
        return 0
    print(
        f"\n{args.viewers} viewers poll the table fragment every {INTERVAL:g} s for {args.seconds:g} s "
        "(gunicorn with 3 workers, PostgreSQL, Redis, one sync loop):"
    )
    load_args = ["--child", "load", "--viewers", str(args.viewers), "--seconds", str(args.seconds)]
    load = common.run_child(common.in_postgresql([*own, *load_args]), {})
    print(
        f"  polls: {load['answered']:,} answered, {load['failed']} failed; poll time median {load['median']:.1f} ms, "
        f"p95 {load['p95']:.1f} ms"
    )
    per_interval = load["walks"] / (load["seconds"] / INTERVAL)
    verdict = "ok" if per_interval <= 1.0 else "MISSED"
    print(
        f"  upstream: {load['walks']} list walks and {load['calls']} calls in {load['seconds']:.1f} s = "
        f"{per_interval:.2f} walks and {load['calls'] / (load['seconds'] / INTERVAL):.2f} calls per {INTERVAL:g} s "
        f"interval  ≤ 1 walk per interval: {verdict}"
    )
    return 0


def _print_pages(args, cache_name: str, sqlite: dict, postgresql: dict) -> None:
    where = "the database cache table (no REDIS_URL)" if cache_name == "database" else "Redis (REDIS_URL)"
    print(
        f"\nServer time per page over {args.batches:,} batches ({args.requests} requests each, in-process), "
        f"cache: {where}:"
    )
    print(
        f"  {'page':<27}{'SQLite median':>14}{'cpu':>8}{'load':>6}{'PostgreSQL median':>19}{'cpu':>8}{'load':>6}"
        f"{'queries':>9}  target"
    )
    missed = []
    for page, target in TARGETS_MS.items():
        lite, pg = sqlite[page], postgresql[page]
        verdict = "ok" if max(lite["median"], pg["median"]) <= target else "MISSED"
        print(
            f"  {page:<27}{lite['median']:>12.1f}ms{lite['cpu']:>6.1f}ms{lite['load']:>6.1f}"
            f"{pg['median']:>17.1f}ms{pg['cpu']:>6.1f}ms{pg['load']:>6.1f}{pg['queries']:>9}  ≤ {target:g} ms median: "
            f"{verdict}"
        )
        if verdict == "MISSED":
            missed.append(page)
    print("  (cpu: this process's CPU time, the median; load: the 1-minute load average while it was measured)")
    for page in missed:
        print(f"  why '{page.strip()}' missed: {_why(page, sqlite[page], postgresql[page], TARGETS_MS[page])}")


def _why(page: str, sqlite: dict, postgresql: dict, target: float) -> str:
    """Where a missed page's time went, on each database that missed: waiting on its queries, and the rest (Python:
    the ORM, the templates, the middleware), with what the page recomputes from the data at that moment."""
    parts = []
    for name, figures in (("SQLite", sqlite), ("PostgreSQL", postgresql)):
        if figures["median"] > target:
            rest = figures["median"] - figures["in_queries"]
            parts.append(
                f"{name} {figures['in_queries']:.1f} ms waiting on {figures['queries']} queries, {rest:.1f} ms "
                f"elsewhere (Python, {figures['cpu']:.1f} ms of CPU, the rest waiting for a CPU at load "
                f"{figures['load']:.1f})"
            )
    return "; ".join(parts) + f" ({WHAT_IT_RECOMPUTES.get(page, 'see docs/performance.md')})"


# --- Pages, in a child process with its own database -----------------------------------------------------------


def _setup_django():
    os.environ.setdefault("SANDBOX_SEED", "false")
    return common.ready_django()


def _fill(batches: int) -> str:
    """Bulk-insert `batches` batches with one snapshot each; returns a running batch's id (with 50 snapshots)."""
    from django.db import connection
    from django.utils import timezone

    from batches import services
    from batches.models import Batch, BatchSnapshot, payload_digest

    newest = int(time.time()) - 60
    now = timezone.now()
    running_id = ""
    for start in range(0, batches, 2000):
        rows = []
        for n in range(start, min(start + 2000, batches)):
            running = n % RUNNING_SHARE == 1
            payload = common.batch_payload(f"batch_prod{n:07d}", newest - n * 60, running)
            row = Batch(batch_id=payload["id"], first_seen_at=now)
            row._apply(services.ApiBatch.from_api(payload), payload_digest(payload), now)
            row.last_seen_at = row.last_changed_at = now
            rows.append(row)
            running_id = running_id or (payload["id"] if running else "")
        Batch.objects.bulk_create(rows)
        BatchSnapshot.objects.bulk_create(
            [
                BatchSnapshot(
                    batch=row,
                    observed_at=now,
                    status=row.status,
                    total_requests=row.total_requests,
                    completed_requests=row.completed_requests,
                    failed_requests=row.failed_requests,
                    payload=row.payload,
                    payload_hash=row.payload_hash,
                )
                for row in rows
            ]
        )
    row = Batch.objects.get(batch_id=running_id)
    history = []
    for step in range(1, 50):
        payload = {**row.payload, "request_counts": {"total": 1000, "completed": step * 7, "failed": 0}}
        history.append(
            BatchSnapshot(
                batch=row,
                observed_at=now,
                status=row.status,
                total_requests=1000,
                completed_requests=step * 7,
                failed_requests=0,
                payload=payload,
                payload_hash=payload_digest(payload),
            )
        )
    BatchSnapshot.objects.bulk_create(history)
    if connection.vendor == "postgresql":
        # What autovacuum does to a table this size within a minute of filling it: without statistics the planner
        # guesses a quarter of the rows match any IS NOT NULL and scans the whole table (data_version's count of
        # claimed cancels took 35 ms instead of a fraction of one).
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return running_id


def _measure_pages(batches: int, requests: int, redis_url: str) -> dict:
    """{"database": figures, "redis": figures}: the pages timed with each cache (Redis only with `redis_url`)."""
    settings = _setup_django()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.utils import timezone

    from batches import list_figures, lookups, services
    from batches.freshness import LIST_STATE
    from batches.models import Batch, SyncState, record_batch
    from batches.views.listing import TABLE_RENDERINGS

    running_id = _fill(batches)
    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing may call upstream: it would fail here
    now = timezone.now()
    SyncState.objects.update_or_create(name=LIST_STATE, defaults={"claimed_at": now, "succeeded_at": now})
    row = Batch.objects.get(batch_id=running_id)
    user = get_user_model().objects.create_superuser("bench", password=None)
    client = Client()
    client.force_login(user)
    fragment = {"HTTP_HX_REQUEST": "true"}
    # The newest running batch, on the list's first page, moves on by a request before each timed poll: what the
    # sync loop records between two polls (the data's version changes; nothing else does), and then what its pass
    # does after recording a change (batches.list_figures.warm). Without the pass: a change that a webhook or a
    # user's action recorded, whose first poll computes the running batches' figures itself.
    changing = Batch.objects.filter(is_terminal=False).order_by("-created_at").first()
    progress = iter(range(1_000, 10**9))  # above the filled 400: an older count would be ignored

    def record_a_change():
        payload = {**changing.payload, "request_counts": {"total": 10**9, "completed": next(progress), "failed": 0}}
        record_batch(services.ApiBatch.from_api(payload))

    def change():
        record_a_change()
        list_figures.warm()

    def forget():
        """Nothing kept: the shared cache, and this process's renderings of the table and figures (its rows' stay)."""
        cache.clear()
        TABLE_RENDERINGS.clear()
        list_figures.KEPT_HERE.clear()

    # The detail page first: the fragments' changes below each add a snapshot to that same batch (the newest running
    # one), and the page reads every snapshot of its batch.
    pages = {
        "detail (running)": (f"/batches/{running_id}/", {}, None),
        "list": ("/batches/", {}, None),
        "fragment (after a change)": ("/batches/", fragment, change),
        "  the same, no sync pass": ("/batches/", fragment, record_a_change),
        "fragment (cold cache)": ("/batches/", fragment, forget),
        "fragment (shared)": ("/batches/", fragment, None),
    }

    def time_pages() -> dict:
        cache.set(lookups.file_size_key(row.connection_id, row.input_file_id), 123_456, None)
        return {name: time_page(*page) for name, page in pages.items()}

    def time_page(url, headers, before) -> dict:
        times, cpu, in_queries = [], [], []
        for attempt in range(requests + 3):
            if before:
                before()
            waited = []

            def timed(execute, sql, params, many, context, waited=waited):
                started = time.perf_counter()
                try:
                    return execute(sql, params, many, context)
                finally:
                    waited.append(time.perf_counter() - started)

            started, started_cpu = time.perf_counter(), time.process_time()
            with CaptureQueriesContext(connection) as queries, connection.execute_wrapper(timed):
                response = client.get(url, **headers)
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code in (200, 286), (url, headers, response.status_code)
            if attempt >= 3:  # the first ones warm up connections and caches
                times.append(elapsed)
                cpu.append((time.process_time() - started_cpu) * 1000)
                in_queries.append(sum(waited) * 1000)
        return {
            "median": statistics.median(times),
            "p95": _p95(times),
            "cpu": statistics.median(cpu),
            "in_queries": statistics.median(in_queries),
            "queries": len(queries),
            "load": os.getloadavg()[0],
        }

    figures = {"database": time_pages()}
    if redis_url:
        redis = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
        with override_settings(CACHES={"default": {**settings.CACHES["default"], **redis, "KEY_PREFIX": "batchboard"}}):
            figures["redis"] = time_pages()
    return figures


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


# --- Load, in a child process inside the PostgreSQL cluster -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _measure_load(viewers: int, seconds: float) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="batchboard-bench-load-"))
    redis_port, sandbox_port, web_port = _free_port(), _free_port(), _free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}/sandbox/v1"
    os.environ.update(
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        SANDBOX_URL=sandbox_url,
        SANDBOX_SPEED="1",  # the batches stay running through the run: every poll could change something
        SANDBOX_FILES_DIR=str(scratch / "sandbox-files"),
        BATCHBOARD_REFRESH_INTERVAL=str(INTERVAL),
        DJANGO_SECRET_KEY="benchmark-secret-key-" + "x" * 40,
    )
    started = []

    def start(command, log):
        started.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    upstream_log = scratch / "upstream.log"
    gunicorn = [sys.executable, "-m", "gunicorn", "dashboard.wsgi"]
    try:
        with open(scratch / "processes.log", "w") as log:
            start(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], log)
            settings = _setup_django()
            start(
                [
                    *gunicorn,
                    *("--bind", f"127.0.0.1:{sandbox_port}", "--workers", "1", "--threads", "16"),
                    *("--access-logfile", str(upstream_log), "--access-logformat", "%(m)s %(U)s ?%(q)s %(a)s"),
                ],
                log,
            )
            start([*gunicorn, "--bind", f"127.0.0.1:{web_port}", "--workers", "3", "--threads", "4"], log)
            for port in (sandbox_port, web_port):
                common.wait_until_answering(f"http://127.0.0.1:{port}/healthz", "gunicorn", timeout=60.0)
            _create_running_batches(sandbox_url, 20)
            start([sys.executable, "manage.py", "sync_batches", "--loop", "--interval", str(INTERVAL)], log)
            cookie = _session_cookie(settings)
            offset = upstream_log.stat().st_size
            began = time.monotonic()
            times, failures = _poll(f"http://127.0.0.1:{web_port}/batches/", cookie, viewers, seconds)
            elapsed = time.monotonic() - began
            # The dashboard's client names itself in User-Agent; the benchmark's own calls above do not count.
            calls = [line for line in upstream_log.read_text()[offset:].splitlines() if " batchboard/" in line]
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    walks = [line for line in calls if line.startswith("GET ") and line.split()[1].endswith("/batches")]
    walks = [line for line in walks if "after=" not in line.split()[2]]
    return {
        "answered": len(times),
        "failed": failures,
        "median": statistics.median(times) if times else 0.0,
        "p95": _p95(times) if times else 0.0,
        "walks": len(walks),
        "calls": len(calls),
        "seconds": elapsed,
    }


def _create_running_batches(sandbox_url: str, count: int) -> None:
    import requests

    headers = {"Authorization": "Bearer sk-sandbox"}
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    }
    upload = requests.post(
        f"{sandbox_url}/files",
        headers=headers,
        data={"purpose": "batch"},
        files={"file": ("input.jsonl", json.dumps(line).encode() + b"\n")},
        timeout=30,
    )
    upload.raise_for_status()
    for _ in range(count):
        requests.post(
            f"{sandbox_url}/batches",
            headers=headers,
            json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            timeout=30,
        ).raise_for_status()


def _session_cookie(settings) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user("viewer", password=None)
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _poll(url: str, cookie: str, viewers: int, seconds: float) -> tuple[list[float], int]:
    import random

    import requests

    times: list[float] = []
    failures = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def viewer(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        session.cookies.set("sessionid", cookie, domain="127.0.0.1")
        time.sleep(rng.uniform(0, INTERVAL))
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                response = session.get(url, headers={"HX-Request": "true"}, timeout=30)
                ok = response.status_code in (200, 286)
            except requests.RequestException:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if ok:
                    times.append(elapsed)
                else:
                    failures[0] += 1
            time.sleep(max(INTERVAL - elapsed / 1000, 0))

    threads = [threading.Thread(target=viewer, args=(seed,)) for seed in range(viewers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, failures[0]


if __name__ == "__main__":
    sys.exit(main())
