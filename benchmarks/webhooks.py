"""Benchmark of the webhook receiver: a burst of signed deliveries acknowledged fast, then processed with one
retrieve each, duplicates included.

`python -m benchmarks.webhooks` (run by `make bench`) works in a scratch database. The dashboard and the sandbox are
served in this process (common.serve, which counts the calls that reach the sandbox). It creates --deliveries
sandbox batches, POSTs one signed `batch.completed` delivery for each from --senders threads at once, and each
delivery a second time (the API delivers at least once), then runs a task worker until every delivery is processed.
It prints the receiver's answer times (p50, p99), how long processing took, and the retrieves per batch.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from benchmarks import common

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TARGET_P99_MS = 100.0
CHAT = "/v1/chat/completions"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000, help="Batches, one delivery each (default: 1000).")
    parser.add_argument("--senders", type=int, default=8, help="Threads sending at once (default: 8).")
    options = parser.parse_args()
    if not 10 <= options.deliveries <= 10_000 or not 1 <= options.senders <= 64:
        parser.error("--deliveries must be 10..10000, --senders 1..64")
    common.setup(
        BATCHBOARD_WEBHOOK_SECRET=SECRET,
        BATCHBOARD_UPSTREAM_BUDGET="1000000",
        BATCHBOARD_ARCHIVE="off",
        SANDBOX_SPEED="1000000",
        DJANGO_SECRET_KEY=f"benchmark-{os.urandom(16).hex()}",
    )
    return _run(options)


def _run(options) -> int:
    import requests
    from django.db import connections
    from django_tasks_db.management.commands.db_worker import Worker
    from standardwebhooks.webhooks import Webhook

    from batches import services
    from batches.models import Batch
    from webhooks.models import Delivery

    counter = common.UpstreamCounter()
    server, base = common.serve(counter)
    client = services.get_client()
    line = {"custom_id": "r1", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini", "messages": []}}
    line["body"]["messages"] = [{"role": "user", "content": "hi"}]
    upload = client.upload_fileobj(io.BytesIO(json.dumps(line).encode() + b"\n"), filename="in.jsonl")
    batch_ids = [client.create_batch(input_file_id=upload.id, endpoint=CHAT).id for _ in range(options.deliveries)]
    time.sleep(0.5)  # at SANDBOX_SPEED 1,000,000 every batch is completed by now
    before = counter.snapshot()

    signer = Webhook(SECRET)
    sessions = threading.local()

    def deliver(number: int) -> tuple[float, int]:
        batch_id = batch_ids[number % len(batch_ids)]
        webhook_id = f"wh_bench{number % len(batch_ids):06d}"
        body = json.dumps(
            {
                "id": f"evt_{webhook_id}",
                "object": "event",
                "type": "batch.completed",
                "created_at": int(time.time()),
                "data": {"id": batch_id},
            }
        ).encode()
        moment = datetime.now(tz=UTC)
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signer.sign(webhook_id, moment, body),
            "content-type": "application/json",
        }
        session = getattr(sessions, "session", None) or requests.Session()
        sessions.session = session
        started = time.perf_counter()
        response = session.post(f"{base}/webhooks/openai/", data=body, headers=headers, timeout=30)
        return (time.perf_counter() - started) * 1000, response.status_code

    burst_started = time.perf_counter()
    with ThreadPoolExecutor(options.senders) as pool:
        answers = list(pool.map(deliver, range(2 * options.deliveries)))
    burst_seconds = time.perf_counter() - burst_started
    times = [elapsed for elapsed, _status in answers]
    refused = sum(1 for _elapsed, status in answers if status != 200)

    worker = Worker(
        queue_names=["*"],
        interval=0.05,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="bench-webhooks",
        excluded_queue_names=[],
    )
    processing_started = time.perf_counter()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    while Delivery.objects.filter(state="received").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    processing_seconds = time.perf_counter() - processing_started
    worker.running = False
    thread.join(timeout=30)
    after = counter.snapshot()
    retrieves = after["retrieve"] - before["retrieve"]
    processed = Delivery.objects.filter(state="processed").count()
    completed = Batch.objects.filter(batch_id__in=batch_ids, status="completed").count()
    server.shutdown()
    connections.close_all()

    table = common.Table(f"Webhooks: {options.deliveries} batches, each delivered twice by {options.senders} senders")
    table.add("answer time p50", f"{common.percentile(times, 50):.1f} ms", "", None)
    p99 = common.percentile(times, 99)
    table.add("answer time p99", f"{p99:.1f} ms", f"< {TARGET_P99_MS:.0f} ms", p99 < TARGET_P99_MS)
    table.add("burst", f"{len(answers)} in {burst_seconds:.1f} s", "", None)
    table.add("answers other than 200", str(refused), "0", refused == 0)
    table.add("deliveries stored", str(Delivery.objects.count()), str(options.deliveries), None)
    table.add(
        "processed",
        f"{processed} in {processing_seconds:.1f} s (1 worker)",
        str(options.deliveries),
        processed == options.deliveries,
    )
    per_batch = retrieves / options.deliveries
    table.add("retrieves per batch", f"{per_batch:.2f}", "1.00", retrieves == options.deliveries)
    table.add("recorded completed", str(completed), str(options.deliveries), completed == options.deliveries)
    print(common.machine())
    table.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
