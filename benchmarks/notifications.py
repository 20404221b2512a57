"""Benchmark of notifications: events of finished batches fanned out to many destinations, each delivered once.

`python -m benchmarks.notifications` (run by `make bench`) works in a scratch database. It makes --destinations
json:// destinations (ten per user) pointing at a local receiver, each subscribed to the default connection, records
--batches batches final (each event twice, as the sync loop and a webhook would), then runs --workers task workers
(threads of this process, the real db_worker loop) until every notification is sent. It prints how long the fan-out
and the deliveries took, the notifications per second, and how many messages the receiver got against the events.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.fernet import Fernet

from benchmarks import common

TARGET_SECONDS = 60.0
PER_USER = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destinations", type=int, default=1_000, help="Destinations (default: 1000).")
    parser.add_argument("--batches", type=int, default=10, help="Batches that finish (default: 10).")
    parser.add_argument("--workers", type=int, default=4, help="Task worker threads (default: 4).")
    options = parser.parse_args()
    if not 10 <= options.destinations <= 10_000 or not 1 <= options.batches <= 100 or not 1 <= options.workers <= 16:
        parser.error("--destinations must be 10..10000, --batches 1..100, --workers 1..16")
    common.setup(
        BATCHBOARD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        BATCHBOARD_ARCHIVE="off",
        DJANGO_SECRET_KEY=f"benchmark-{os.urandom(16).hex()}",
    )
    return _run(options)


class _Receiver(BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with _Receiver.lock:
            _Receiver.received += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _run(options) -> int:
    from django.contrib.auth.models import User
    from django.db import connections
    from django_tasks_db.management.commands.db_worker import Worker

    from batches import services
    from batches.models import Connection, record_batches
    from notifications.models import Destination, Kind, Notification, Scope, State, Subscription

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"json://127.0.0.1:{receiver.server_address[1]}/hook"
    connection = Connection.objects.default()
    users = User.objects.bulk_create(User(username=f"user{n}") for n in range(options.destinations // PER_USER))
    destinations = []
    for number in range(options.destinations):
        destination = Destination(user=users[number % len(users)], name=f"d{number}", kind=Kind.APPRISE)
        destination.set_target(url)
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
    started = time.perf_counter()
    for _twice in range(2):  # the loop and a webhook's task record the same final states
        record_batches([api_batch(number, "completed") for number in range(options.batches)], connection=connection)

    expected = options.destinations * options.batches
    workers = []
    for number in range(options.workers):
        worker = Worker(
            queue_names=["*"],
            interval=0.05,
            batch=False,
            backend_name="default",
            startup_delay=False,
            max_tasks=None,
            worker_id=f"bench-notify-{number}",
            excluded_queue_names=[],
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        workers.append((worker, thread))
    fanned_out = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        rows = Notification.objects.count()
        if fanned_out is None and rows >= expected:
            fanned_out = time.perf_counter() - started
        if rows >= expected and not Notification.objects.filter(state=State.PENDING).exists():
            break
        time.sleep(0.2)
    finished = time.perf_counter() - started
    for worker, _thread in workers:
        worker.running = False
    for _worker, thread in workers:
        thread.join(timeout=30)
    sent = Notification.objects.filter(state=State.SENT).count()
    rows = Notification.objects.count()
    receiver.shutdown()
    connections.close_all()

    table = common.Table(
        f"Notifications: {options.batches} batches final (each recorded twice) x {options.destinations} destinations"
        f", {options.workers} worker threads"
    )
    table.add("notifications (unique rows)", f"{rows:,}", f"{expected:,}", rows == expected)
    table.add("fanned out in", f"{fanned_out:.1f} s" if fanned_out else "not finished", "", None)
    table.add("all sent in", f"{finished:.1f} s", f"< {TARGET_SECONDS:.0f} s", sent == expected and finished < 60)
    table.add("sent per second", f"{sent / finished:,.0f}", "", None)
    table.add("messages the receiver got", f"{_Receiver.received:,}", f"{expected:,}", _Receiver.received == expected)
    print(common.machine())
    table.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
