"""Benchmark of background work on task workers: the list stays fresh while results are kept.

`python -m benchmarks.tasks` (run by `make bench`) works in a scratch folder (SQLite database, sandbox files, results
storage), never in yours. The sandbox is served by gunicorn in processes of its own; the sync loop runs
in this process, a pass every --interval seconds; WORKERS `manage.py db_worker` processes run the tasks. Two phases:

1. A --lines-line batch (about 100 MB of output at 50,000 lines) becomes final: a worker fetches and indexes its
   files while the loop keeps passing.
2. --tasks small batches become final at once: the workers drain their --tasks keep_results tasks.

It prints the delay before each pass starts (beyond the interval: the loop must not wait for any of this work) and
the tasks per minute the workers drain.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import common

SCRATCH_ENV = "BATCHBOARD_BENCH_TASKS_SCRATCH"
WORKERS = 4
TARGET_DELAY_SECONDS = 1.0
CHAT = "/v1/chat/completions"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000, help="Lines of the big batch (default: 50000).")
    parser.add_argument("--tasks", type=int, default=1_000, help="Small batches kept in phase 2 (default: 1000).")
    parser.add_argument("--interval", type=float, default=2.0, help="Seconds between passes (default: 2).")
    options = parser.parse_args()
    if not 100 <= options.lines <= 50_000 or not 10 <= options.tasks <= 5_000 or not 1 <= options.interval <= 60:
        parser.error("--lines must be 100..50000, --tasks 10..5000, --interval 1..60")
    if not os.environ.get(SCRATCH_ENV):
        interval = str(options.interval)
        return common.rerun_in_scratch(
            "benchmarks.tasks",
            ["--lines", str(options.lines), "--tasks", str(options.tasks), "--interval", interval],
            SCRATCH_ENV,
            BATCHBOARD_HISTORY_INTERVAL=interval,
            BATCHBOARD_REFRESH_INTERVAL=interval,
            BATCHBOARD_UPSTREAM_BUDGET="1000000",
            BATCHBOARD_ARCHIVE="new",
            SANDBOX_DROP_RATE="0.01",
            DJANGO_SECRET_KEY=f"benchmark-{os.urandom(16).hex()}",
        )
    common.ready_django()
    return _run(options)


class PassClock:
    """When each pass of the loop started, from the loop's own run_pass."""

    def __init__(self):
        self.starts: list[float] = []
        self.durations: list[float] = []

    def install(self):
        from batches import sync

        original = sync.run_pass

        def timed(**kwargs):
            begun = time.time()
            outcome = original(**kwargs)
            if outcome.ran:
                self.starts.append(begun)
                self.durations.append(outcome.seconds)
            return outcome

        sync.run_pass = timed

    def delays(self, since: float, until: float, interval: float) -> list[float]:
        """Seconds beyond the interval that each pass started in [since, until] waited after the one before."""
        pairs = zip(self.starts, self.starts[1:], strict=False)
        return [max(later - earlier - interval, 0.0) for earlier, later in pairs if since <= later <= until]


def _serve_sandbox(scratch: Path) -> tuple[subprocess.Popen, str]:
    """The sandbox (the upstream API here) served by gunicorn with 3 worker processes, as an API serves many clients
    at once: a 100 MB download never slows the list calls of the loop down (in one process it shares the GIL)."""

    port = _free_port()
    log = open(scratch / "sandbox-server.log", "wb")  # noqa: SIM115 (the process's whole life)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "dashboard.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "3"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SANDBOX_URL": f"http://127.0.0.1:{port}/sandbox/v1"},
    )
    common.wait_until_answering(f"http://127.0.0.1:{port}/healthz", "the sandbox server")
    return server, f"http://127.0.0.1:{port}/sandbox/v1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _small_batches(count: int) -> None:
    """`count` one-line batches created just now and already final (speed 1e6), their files written."""
    from sandbox import store

    line = {"custom_id": "only", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini", "messages": []}}
    line["body"]["messages"] = [{"role": "user", "content": "Say hi"}]
    directory = store.files_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".bench-small"
    path.write_bytes(json.dumps(line).encode() + b"\n")
    input_file = store.store_file(path, filename="small.jsonl", purpose="batch", now=time.time(), expires_after=None)
    created = [
        store.create_batch(
            input_file=input_file,
            endpoint=CHAT,
            metadata=None,
            output_expires_after=None,
            now=time.time() - 1,
            speed=1e6,
        )
        for _ in range(count)
    ]
    for batch in created:
        store.observe(batch, time.time())


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {_state()}")
        time.sleep(0.2)


def _state() -> str:
    from django.db.models import Count
    from django_tasks_db.models import DBTaskResult

    from batches.models import Batch, Reaction, SyncState

    reactions = dict(Reaction.objects.order_by().values_list("state").annotate(n=Count("pk")))
    tasks = dict(DBTaskResult.objects.order_by().values_list("status").annotate(n=Count("pk")))
    sync_state = SyncState.objects.values("succeeded_at", "failed_at", "error_message").first()
    return f"{Batch.objects.count()} batches, reactions {reactions}, tasks {tasks}, sync {sync_state}"


def _run(options) -> int:
    from django.conf import settings
    from django.db import connections
    from django.db.models import Count
    from django_tasks_db.models import DBTaskResult

    from batches import sync
    from batches.models import Batch, Reaction, SyncState
    from benchmarks.results import build_batch
    from results.archive import KEEP_STEP
    from results.models import ResultArchive
    from sandbox.models import SandboxFile

    scratch = Path(os.environ[SCRATCH_ENV])
    print(f"tasks benchmark: scratch folder {scratch}")
    print(f"  {common.machine()}")
    server, url = _serve_sandbox(scratch)
    settings.SANDBOX_URL = settings.OPENAI_BASE_URL = url
    clock = PassClock()
    clock.install()
    stop = threading.Event()

    def loop():
        try:
            sync.sync_loop(stop, wake_every=0.05, quiet=True)
        finally:
            connections.close_all()

    loop_thread = threading.Thread(target=loop, daemon=True)
    worker_env = {**os.environ, "SANDBOX_URL": url}
    workers = []
    try:
        loop_thread.start()
        _wait(lambda: SyncState.objects.filter(succeeded_at__isnull=False).exists(), 60, "the first pass")
        workers = [
            subprocess.Popen(
                [sys.executable, "manage.py", "db_worker", "--no-reload", "--interval", "0.2", "-v", "0"],
                env=worker_env,
                stdout=subprocess.DEVNULL,
            )
            for _ in range(WORKERS)
        ]

        # Phase 1: a big batch becomes final; a worker fetches and indexes its files while the loop passes.
        begun = time.monotonic()
        big = build_batch(options.lines, created_ago=1, speed=1e6)
        result_files = SandboxFile.objects.filter(pk__in=[big.output_file_id, big.error_file_id])
        sizes = result_files.values_list("bytes", flat=True)
        print(
            f"  phase 1: the sandbox wrote a {options.lines:,}-line batch in {time.monotonic() - begun:.1f} s "
            f"(result files: {sum(sizes) / 1e6:.0f} MB)"
        )
        finished = Reaction.objects.filter(batch__batch_id=big.id, state__in=("done", "failed"))
        _wait(finished.exists, 900, "the big batch's results")
        big_archive = ResultArchive.objects.get(batch__batch_id=big.id)
        # The worker's own times, from the task's row: when it took the task, when it was done.
        task = DBTaskResult.objects.filter(
            task_path="results.tasks.keep_results", args_kwargs__args__0=finished.get().pk, status="SUCCESSFUL"
        ).get()
        fetch_started, fetch_ended = task.started_at.timestamp(), task.finished_at.timestamp()
        phase1 = clock.delays(fetch_started, fetch_ended, options.interval)

        # Phase 2: many small batches become final at once; the workers drain their tasks.
        _small_batches(options.tasks)
        created = time.time()
        small_batches = Batch.objects.exclude(batch_id=big.id)
        _wait(lambda: small_batches.count() >= options.tasks, 300, "the loop to record the small batches")
        # A batch whose only line the sandbox dropped (SANDBOX_DROP_RATE) has no file to keep.
        with_files = small_batches.exclude(output_file_id="", error_file_id="").count()
        small = Reaction.objects.filter(step=KEEP_STEP).exclude(batch__batch_id=big.id)
        _wait(lambda: small.count() >= with_files, 60, "the small batches' reactions")
        recorded = time.time()
        _wait(lambda: not small.filter(state__in=("pending", "running")).exists(), 3600, "the workers")
        drained = time.time()
        phase2 = clock.delays(created, drained, options.interval)
        states = dict(small.order_by().values_list("state").annotate(n=Count("pk")))
    finally:
        stop.set()
        loop_thread.join(timeout=60)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        server.terminate()
        server.wait(timeout=30)

    minutes = (drained - recorded) / 60
    drained_count = sum(states.values())
    title = f"Task workers ({WORKERS} db_worker processes) beside the sync loop (a pass every {options.interval:g} s)"
    table = common.Table(f"{title}, SQLite")
    table.add("big batch: fetch + index on a worker", f"{fetch_ended - fetch_started:.1f} s", "", None)
    table.add("big batch: kept", f"{big_archive.state}, {big_archive.summary.get('rows', 0):,} rows", "ready", None)
    for name, delays in (("while the big batch is kept", phase1), (f"while {options.tasks:,} tasks drain", phase2)):
        if delays:
            p95 = common.percentile(delays, 95)
            table.add(
                f"delay before a pass starts, p95, {name} ({len(delays)} passes)",
                f"{p95:.2f} s (max {max(delays):.2f} s)",
                f"≤ {TARGET_DELAY_SECONDS:g} s beyond the interval",
                p95 <= TARGET_DELAY_SECONDS,
            )
    table.add(
        f"tasks drained per minute ({drained_count:,} keep_results, {WORKERS} workers)",
        f"{drained_count / minutes:,.0f}",
        "",
        None,
    )
    table.add("  their outcomes", ", ".join(f"{n:,} {state}" for state, n in sorted(states.items())), "all done", None)
    table.add("  time for the loop to record them", f"{recorded - created:.1f} s", "", None)
    table.print()
    print(f"  pass durations: median {common.median(clock.durations):.2f} s, max {max(clock.durations):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
