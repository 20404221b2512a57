"""A large organisation: the first view, the import, an incremental pass and 50 pollers, against the sandbox.

`python -m benchmarks.scale [--batches 100000] [--running 1000] [--latency 0.05] [--pollers 50] [--seconds 60]`

The sandbox is seeded with --batches batches created over a month, the newest --running still running, and every
API call waits --latency seconds. The dashboard and the sandbox share one threaded server on a free port; the sync
loop runs in a thread, as in `make run`; upstream calls are counted where the sandbox receives them. The budget is
raised for the import (BATCHBOARD_UPSTREAM_BUDGET); at the default of 120 calls a minute the import's calls alone
would take the time printed beside it.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

from benchmarks import common

REFRESH_INTERVAL = 2.0
DEFAULT_BUDGET = 120
LOOP_SHARE = DEFAULT_BUDGET - DEFAULT_BUDGET // 10  # what the sync loop may spend: all but the cancels' share


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--running", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="Seconds added to every API call.")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="How long the pollers poll.")
    options = parser.parse_args(argv)
    common.setup(
        BATCHBOARD_REFRESH_INTERVAL=str(REFRESH_INTERVAL),
        BATCHBOARD_UPSTREAM_BUDGET="1000000",
        SANDBOX_LATENCY=str(options.latency),
    )
    run(**vars(options))


def run(*, batches: int, running: int, latency: float, pollers: int, seconds: float) -> None:
    from django.utils import timezone

    from batches import freshness, sync
    from batches.models import Batch, SyncState
    from sandbox import seed

    print(common.machine())
    begun = time.monotonic()
    counts = seed.seed_scale(batches, running, time.time())
    print(f"seeded the sandbox with {batches:,} batches ({counts}) in {time.monotonic() - begun:.1f} s")
    counter = common.UpstreamCounter()
    server, base = common.serve(counter)
    client = _operator_client()
    table = common.Table(
        f"{batches:,} batches, {running:,} running, {latency * 1000:g} ms per API call, "
        f"BATCHBOARD_REFRESH_INTERVAL={REFRESH_INTERVAL:g} s"
    )

    # 1. A fresh install: the loop starts, a viewer opens the list.
    importer = _Importer()
    started = time.monotonic()
    importer.start()
    newest = _newest_sandbox_id()
    first_view = None
    while time.monotonic() - started < 60:
        response = client.get("/batches/")
        # Both on one page: a view can read the freshness just before the first page is committed, and its rows
        # just after; the next poll then shows the progress too.
        if newest in response.text and "Importing history" in response.text:
            first_view = time.monotonic() - started
            break
        time.sleep(0.05)
    table.add(
        "first list view on an empty cache",
        f"{first_view:.2f} s to show the newest page and the import's progress" if first_view else "> 60 s",
        "≤ 2 s, newest page and import progress",
        bool(first_view and first_view <= 2),
    )

    # 2. The import runs on in the background, a slice per pass; each pass also walks the running window.
    importer.join()
    import_seconds = time.monotonic() - started
    allowed = math.ceil(batches / 100) + 5
    import_calls = 1 + importer.import_calls  # the fresh install's first page, then the import's pages
    table.add(
        "full import, upstream calls",
        f"{import_calls:,} (+ {importer.other_calls} by {importer.passes} passes' top walks meanwhile)",
        f"≤ ceil(N/100) + 5 = {allowed:,}",
        import_calls <= allowed,
    )
    table.add(
        "full import, time",
        f"{import_seconds:.0f} s ({Batch.objects.count():,} batches cached)",
        f"printed; ≥ {counter.total() / LOOP_SHARE:.1f} min at the loop's {LOOP_SHARE} calls/min of the default",
        None,
    )

    # 3. One incremental pass over the running window.
    active = Batch.objects.active().count()
    before, counts_before = counter.total(), counter.snapshot()
    outcome = sync.run_pass(force=True)
    pass_calls = counter.total() - before
    calls = {kind: count - counts_before[kind] for kind, count in counter.snapshot().items()}
    allowed = math.ceil(active / 100) + 2
    finished = len(outcome.result.became_final)
    table.add(
        "one incremental pass, upstream calls",
        f"{pass_calls}: {calls['list']} list, {calls['retrieve']} retrieve, {calls['other']} fetching results files "
        f"to keep ({outcome.seconds:.1f} s, {outcome.changed} changed, {finished} finished)",
        f"list + retrieve ≤ ceil({active} running / 100) + 2 = {allowed}",
        calls["list"] + calls["retrieve"] <= allowed,
    )

    # 4. A list view when a refresh is due: it must not call upstream.
    SyncState.objects.filter(name=freshness.LIST_STATE).update(succeeded_at=timezone.now() - timedelta(minutes=5))
    before = counter.total()
    timed = [_timed_get(client, "/batches/") for _ in range(10)]
    slowest = max(wall for wall, _cpu in timed)
    table.add(
        "list view when a refresh is due, max of 10",
        f"{slowest:.1f} ms (cpu {max(cpu for _wall, cpu in timed):.1f} ms), {counter.total() - before} upstream calls",
        "≤ 50 ms, no upstream call",
        slowest <= 50 and counter.total() == before,
    )

    # 5. The list page over the whole cache.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _warm_up in range(3):
        _timed_get(client, "/batches/")
    timed = [_timed_get(client, "/batches/") for _ in range(30)]
    wall, cpu = common.median([t[0] for t in timed]), common.median([t[1] for t in timed])
    with CaptureQueriesContext(connection) as queries:
        client.get("/batches/?page=50")
    with CaptureQueriesContext(connection) as first_page_queries:
        client.get("/batches/")
    constant = len(queries) <= len(first_page_queries)  # the first page may also note the viewer (one UPDATE a second)
    table.add(
        f"list page over {Batch.objects.count():,} cached batches, median",
        f"{wall:.1f} ms (cpu {cpu:.1f} ms), {len(first_page_queries)} queries (page 50: {len(queries)})",
        "≤ 25 ms, constant queries",
        wall <= 25 and constant,
    )

    # 6. 50 viewers poll the table while the loop keeps it current.
    if pollers:
        calls, intervals, answered, failures = _poll(client, base, counter, pollers, seconds)
        per_interval = calls / intervals
        table.add(
            f"{pollers} viewers polling for {seconds:g} s: upstream calls per interval",
            f"{per_interval:.1f} ({calls} in {intervals:.0f} intervals); {answered:,} polls, {len(failures)} errors"
            + (f" ({', '.join(sorted(set(failures))[:3])})" if failures else ""),
            f"≤ the incremental pass's cost ({pass_calls}); 0 errors",
            per_interval <= pass_calls and not failures,
        )
    server.shutdown()
    table.print()


class _Importer(threading.Thread):
    """The sync loop's passes (sync.run_pass, as sync_loop runs them) until the import is done, with their tallies."""

    def __init__(self):
        super().__init__(daemon=True)
        self.passes = self.import_calls = self.other_calls = 0

    def run(self):
        from django.db import connection

        from batches import freshness, sync

        holder = sync.new_holder()
        try:
            while freshness.list_freshness().importing or not self.passes:
                outcome = sync.run_pass(holder=holder)
                if outcome.ran:
                    first_page = 1 if not self.passes else 0  # the fresh install's, counted with the import
                    self.passes += 1
                    self.import_calls += outcome.result.import_calls
                    self.other_calls += outcome.result.pages - outcome.result.import_calls - first_page
                    if outcome.error:
                        raise SystemExit(f"A pass failed: {outcome.describe()}")
                time.sleep(REFRESH_INTERVAL)
        finally:
            connection.close()


def _operator_client():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="batches"))
    client = Client()
    client.force_login(user)
    return client


def _newest_sandbox_id() -> str:
    from sandbox.models import SandboxBatch

    return SandboxBatch.objects.order_by("-created_at", "-id").values_list("id", flat=True).first()


def _timed_get(client, url: str) -> tuple[float, float]:
    """Wall-clock and CPU milliseconds of one request (the test client runs it in this thread)."""
    begun, begun_cpu = time.perf_counter(), time.thread_time()
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}; the benchmark needs working pages.")
    return (time.perf_counter() - begun) * 1000, (time.thread_time() - begun_cpu) * 1000


def _poll(client, base: str, counter: common.UpstreamCounter, pollers: int, seconds: float):
    """Pollers fetch the table fragment every interval while a sync loop runs; upstream calls per interval."""
    from django.conf import settings

    from batches import sync

    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    request = urllib.request.Request(f"{base}/batches/", headers={"Cookie": cookie, "HX-Request": "true"})  # noqa: S310
    answered, failures = [], []
    stop = threading.Event()
    loop = threading.Thread(target=sync.sync_loop, args=(stop,), daemon=True)
    deadline = time.monotonic() + seconds

    def poll(offset: float) -> None:
        next_poll = time.monotonic() + offset
        while next_poll < deadline:
            time.sleep(max(next_poll - time.monotonic(), 0))
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own server
                    response.read()
                answered.append(1)
            except (urllib.error.URLError, OSError) as exc:
                failures.append(type(exc).__name__)
            next_poll += REFRESH_INTERVAL

    threads = [threading.Thread(target=poll, args=(n * REFRESH_INTERVAL / pollers,)) for n in range(pollers)]
    before = counter.total()
    begun = time.monotonic()
    loop.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - begun
    calls = counter.total() - before
    stop.set()
    loop.join()
    return calls, elapsed / REFRESH_INTERVAL, len(answered), failures


if __name__ == "__main__":
    main()
