"""Benchmark of notifications: events of finished batches fanned out to many destinations, each delivered once.

`python -m benchmarks.notifications` (run by `make bench`) runs once on a scratch SQLite database and once in a
throwaway PostgreSQL cluster (pg_virtualenv; --no-postgresql skips it), each in a child process. The child makes
--destinations json:// destinations (ten per user, each its own URL) pointing at a local receiver, each subscribed to
the default connection; starts --workers `manage.py db_worker` processes; then records --batches batches final, each
twice (as the sync loop and a webhook would). The workers fan the events out (a reaction per batch) and send them (a
task per destination, notifications.delivery). It prints the fan-out time, the time until every notification was
sent, the sends per second, the send tasks that ran, the queries per send (measured in-process afterwards on a second
round of events), and how many messages the receiver got against the events, each exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.fernet import Fernet

from benchmarks import common

TARGET_SECONDS = 60.0
PER_USER = 10
QUERY_SAMPLE = 100  # destinations whose sends are counted in-process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destinations", type=int, default=1_000, help="Destinations (default: 1000).")
    parser.add_argument("--batches", type=int, default=10, help="Batches that finish (default: 10).")
    parser.add_argument("--workers", type=int, default=4, help="db_worker processes (default: 4).")
    parser.add_argument("--no-postgresql", action="store_true", help="Only SQLite.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if not 10 <= options.destinations <= 10_000 or not 1 <= options.batches <= 100 or not 1 <= options.workers <= 16:
        parser.error("--destinations must be 10..10000, --batches 1..100, --workers 1..16")
    if options.child:
        common.ready_django()
        print(json.dumps(_measure(options)))
        return 0
    return _run(options)


def _run(options) -> int:
    own = [sys.executable, "-m", "benchmarks.notifications", "--child"]
    own += ["--destinations", str(options.destinations), "--batches", str(options.batches)]
    own += ["--workers", str(options.workers)]
    environment = {
        "BATCHBOARD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "BATCHBOARD_ARCHIVE": "off",
        "DJANGO_SECRET_KEY": f"benchmark-{os.urandom(16).hex()}",
        "SANDBOX_SEED": "false",
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="batchboard-bench-") as scratch:
        print("SQLite: a scratch database...", flush=True)
        results["SQLite"] = common.run_child(
            own,
            {
                **environment,
                "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3",
                "SANDBOX_FILES_DIR": f"{scratch}/sandbox-files",
            },
        )
        if options.no_postgresql:
            print("PostgreSQL: skipped (--no-postgresql).")
        elif shutil.which("pg_virtualenv") is None:
            print("PostgreSQL: skipped (no pg_virtualenv; `make bench` installs postgresql).")
        else:
            print("PostgreSQL: a throwaway cluster...", flush=True)
            results["PostgreSQL"] = common.run_child(
                common.in_postgresql(own), {**environment, "SANDBOX_FILES_DIR": f"{scratch}/sandbox-files-pg"}
            )
    print(common.machine())
    for database, measured in results.items():
        _print(database, measured, options)
    return 0


def _print(database: str, measured: dict, options) -> None:
    expected = options.destinations * options.batches
    table = common.Table(
        f"Notifications on {database}: {options.batches} batches final (each recorded twice) x "
        f"{options.destinations:,} destinations, {options.workers} db_worker processes "
        f"(load average {measured['load_before']:.1f} before, {measured['load_after']:.1f} after)"
    )
    rows, received = measured["rows"], measured["received"]
    table.add("notifications (unique rows)", f"{rows:,}", f"{expected:,}", rows == expected)
    table.add("messages received", f"{received:,}", f"{expected:,}", received == expected)
    once = measured["distinct_received"] == expected and measured["most_copies"] == 1
    table.add("received exactly once each", f"{measured['distinct_received']:,} distinct", f"{expected:,}", once)
    fanned = measured["fanned_out"]
    table.add("fanned out in", f"{fanned:.1f} s" if fanned is not None else "not finished", "", None)
    finished, sent = measured["finished"], measured["sent"]
    table.add("all sent in", f"{finished:.1f} s", f"< {TARGET_SECONDS:.0f} s", sent == expected and finished < 60)
    table.add("sends per second", f"{sent / finished:,.0f}", f"> {expected / TARGET_SECONDS:,.0f}", None)
    table.add("send tasks run", f"{measured['send_tasks']:,}", f"one per destination, not {expected:,}", None)
    table.add("queries per send (in-process)", f"{measured['queries_per_send']:.2f}", "", None)
    table.print()


class _Receiver(BaseHTTPRequestHandler):
    """Counts each (destination path, title) it receives: exactly once means every pair once."""

    seen: Counter = Counter()
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        title = json.loads(body).get("title", "")
        with _Receiver.lock:
            _Receiver.seen[(self.path, title)] += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _measure(options) -> dict:
    from django.contrib.auth.models import User
    from django.db import connection as database
    from django.db import connections
    from django.test.utils import CaptureQueriesContext
    from django_tasks_db.models import DBTaskResult

    from batches import services
    from batches.models import Batch, Connection, record_batches
    from notifications import delivery, fanout
    from notifications.models import Destination, Kind, Notification, Scope, State, Subscription

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.daemon_threads = True
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = receiver.server_address[1]
    connection = Connection.objects.default()
    users = User.objects.bulk_create(User(username=f"user{n}") for n in range(options.destinations // PER_USER))
    destinations = []
    for number in range(options.destinations):
        destination = Destination(user=users[number % len(users)], name=f"d{number}", kind=Kind.APPRISE)
        destination.set_target(f"json://127.0.0.1:{port}/hook/{number}")
        destinations.append(destination)
    destinations = Destination.objects.bulk_create(destinations)
    Subscription.objects.bulk_create(
        Subscription(destination=destination, scope=Scope.CONNECTION, connection=connection)
        for destination in destinations
    )
    now = int(time.time())

    def api_batch(number: int, status: str) -> services.ApiBatch:
        return services.ApiBatch.from_api(
            {
                "id": f"batch_bench{number:06d}",
                "object": "batch",
                "endpoint": "/v1/chat/completions",
                "input_file_id": "file-in",
                "completion_window": "24h",
                "status": status,
                "created_at": now - 600,
                "in_progress_at": now - 590,
                "completed_at": now - 10 if status == "completed" else None,
                "expires_at": now + 86_000,
                "request_counts": {"total": 100, "completed": 100 if status == "completed" else 50, "failed": 0},
                "metadata": {"description": f"benchmark batch {number}"},
            }
        )

    record_batches([api_batch(number, "in_progress") for number in range(options.batches)], connection=connection)
    workers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--no-reload", "--interval", "0.1", "--queue-name", "*"],
            cwd=common.ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(options.workers)
    ]
    try:
        time.sleep(5)  # the workers start (Django's setup) before the clock does
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        for _twice in range(2):  # the loop and a webhook's task record the same final states
            record_batches([api_batch(number, "completed") for number in range(options.batches)], connection=connection)
        expected = options.destinations * options.batches
        fanned_out = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            rows = Notification.objects.count()
            if fanned_out is None and rows >= expected:
                fanned_out = time.perf_counter() - started
            if rows >= expected and not Notification.objects.filter(state=State.PENDING).exists():
                break
            time.sleep(0.1)
        finished = time.perf_counter() - started
        load_after = os.getloadavg()[0]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    sent = Notification.objects.filter(state=State.SENT).count()
    rows = Notification.objects.count()
    send_tasks = DBTaskResult.objects.filter(task_path="notifications.tasks.send_waiting").count()
    received = sum(_Receiver.seen.values())
    distinct_received = len(_Receiver.seen)
    most_copies = max(_Receiver.seen.values(), default=0)

    # Queries per send, in this process: a second round of events for a sample of destinations, sent by their loop.
    sample = destinations[:QUERY_SAMPLE]
    Subscription.objects.exclude(destination__in=sample).delete()
    extra = [api_batch(options.batches + number, "completed") for number in range(options.batches)]
    record_batches(extra, connection=connection)
    for batch in Batch.objects.filter(batch_id__in=[batch.id for batch in extra]):
        fanout.notify_batch(batch, fanout.finished_events(batch))
    with CaptureQueriesContext(database) as queries:
        for destination in sample:
            delivery.send_waiting(destination.pk)
    measured_sends = Notification.objects.filter(state=State.SENT).count() - sent
    receiver.shutdown()
    connections.close_all()
    return {
        "rows": rows,
        "sent": sent,
        "received": received,
        "distinct_received": distinct_received,
        "most_copies": most_copies,
        "fanned_out": fanned_out,
        "finished": finished,
        "send_tasks": send_tasks,
        "queries_per_send": len(queries) / max(measured_sends, 1),
        "load_before": load_before,
        "load_after": load_after,
    }


if __name__ == "__main__":
    raise SystemExit(main())
