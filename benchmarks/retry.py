"""Benchmark of retries: building a retry from a kept 50,000-line input, and a job's merged result over 3 batches.

`python -m benchmarks.retry` (run by `make bench`) works in a scratch folder (database, results storage), never in
yours. It keeps three 50,000-line batches of one job (the original, 10 % failed with 429; two retries of every line)
from files it writes, indexes them as the sync loop would, and measures, beside the targets:
- verifying each retry's link (its 50,000 lines against its parent's kept input): time and peak Python memory;
- building the input of a retry of the original's 5,000 failed lines (time, peak Python memory, and the same for
  1,000 of them: flat memory means about the same peak), and the confirmation's whole preparation (build,
  validate, estimate);
- the final-results page of the job (median of 30, several pages and the "still failing" view);
- the CSV and JSONL exports of the merged table: time to the first chunk, total time, peak Python memory.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from benchmarks import common
from benchmarks.common import rerun_in_scratch

SCRATCH_ENV = "BATCHBOARD_BENCH_RETRY_SCRATCH"
TARGETS = {"build": 5.0, "page": 50.0, "verify": 5.0, "verify_mb": 20.0}
LINES = 50_000
CHAT = "/v1/chat/completions"
REPEATS = 30


def main() -> int:
    if not os.environ.get(SCRATCH_ENV):
        return rerun_in_scratch("benchmarks.retry", [], SCRATCH_ENV)
    common.ready_django()
    return _run(Path(os.environ[SCRATCH_ENV]))


def _input_line(number: int) -> bytes:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a support assistant. Answer in full paragraphs."},
            {"role": "user", "content": f"Ticket {number}: summarise the customer's request and reply."},
        ],
        "max_tokens": 580,
    }
    return json.dumps({"custom_id": f"ticket-{number:05d}", "method": "POST", "url": CHAT, "body": body}).encode()


def _result_line(number: int, status: int) -> bytes:
    custom_id = f"ticket-{number:05d}"
    if status == 200:
        body = {
            "object": "chat.completion",
            "choices": [{"message": {"role": "assistant", "content": f"Dear customer, about ticket {number}: " * 8}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 120},
        }
    else:
        body = {"error": {"message": "Rate limit reached. Please try again in 3s.", "code": "rate_limit_exceeded"}}
    record = {"id": f"r{number}", "custom_id": custom_id, "error": None}
    record["response"] = {"status_code": status, "request_id": f"req{number}", "body": body}
    return json.dumps(record).encode()


def _keep(batch_id: str, created_at: int, metadata: dict, failing, scratch: Path):
    """A completed batch with every line of the input; `failing(number)` says which lines got a 429."""
    from django.core.files import File
    from django.db import transaction
    from django.utils import timezone

    from batches import services
    from batches.models import record_batch
    from results import archive
    from results.models import ArchiveState, ResultArchive

    payload = {
        "id": batch_id,
        "object": "batch",
        "endpoint": CHAT,
        "model": "gpt-4o-mini",
        "input_file_id": f"file-in-{batch_id}",
        "output_file_id": f"file-out-{batch_id}",
        "error_file_id": f"file-err-{batch_id}",
        "completion_window": "24h",
        "status": "completed",
        "created_at": created_at,
        "completed_at": created_at + 600,
        "request_counts": {"total": LINES, "completed": LINES, "failed": 0},
        "metadata": metadata,
    }
    batch = record_batch(services.ApiBatch.from_api(payload))
    paths = {kind: scratch / f"{batch_id}-{kind}.jsonl" for kind in ("input", "output", "error")}
    with open(paths["input"], "wb") as inp, open(paths["output"], "wb") as out, open(paths["error"], "wb") as err:
        for number in range(1, LINES + 1):
            inp.write(_input_line(number) + b"\n")
            status = 429 if failing(number) else 200
            (err if status == 429 else out).write(_result_line(number, status) + b"\n")
    # Recording a final batch may have asked for its archive already (BATCHBOARD_ARCHIVE=new): take that row.
    kept = ResultArchive.objects.update_or_create(batch=batch, defaults={"state": ArchiveState.ARCHIVING})[0]
    names = {}
    for kind, path in paths.items():
        with open(path, "rb") as handle:
            names[f"{kind}_name"] = archive.results_storage().save(f"{batch_id}/{kind}.jsonl", File(handle))
    with transaction.atomic():
        summary = archive._index(kept, {kind: str(path) for kind, path in paths.items()})
    ResultArchive.objects.filter(pk=kept.pk).update(
        state=ArchiveState.READY, archived_at=timezone.now(), summary=summary, **names
    )
    return batch


def _verdict(value: float, target: float, unit: str) -> str:
    return f"≤ {target:g} {unit}: {'ok' if value <= target else 'MISSED'}"


def _run(scratch: Path) -> int:
    import uuid

    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from batches.lineage_keys import LineageState
    from results.models import ResultArchive, ResultFilter
    from retries import submit, verify
    from retries.selection import RetrySelection

    print(f"retry benchmark: a job of 3 x {LINES:,}-line batches, scratch folder {scratch}")
    print(f"  {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start (a shared machine)")
    begun = time.perf_counter()
    now = int(time.time()) - 86_400
    original = _keep("batch_benchoriginal", now, {}, lambda n: n % 10 == 0, scratch)
    link = {"batchboard_retry_of": original.batch_id, "batchboard_job": original.batch_id}
    first = _keep("batch_benchretry1", now + 1000, link, lambda n: n % 10 == 0 and n % 30 != 0, scratch)
    link = {"batchboard_retry_of": first.batch_id, "batchboard_job": original.batch_id}
    second = _keep("batch_benchretry2", now + 2000, link, lambda n: n % 10 == 0 and n % 90 != 0, scratch)
    print(f"  kept and indexed 3 batches in {time.perf_counter() - begun:.1f} s")

    print("")
    print(f"  {'step':<52} {'time':>8} {'memory':>9}  target")
    for retry in (first, second):  # the second is checked once the first (its parent) is verified
        started = time.perf_counter()
        verdict = verify.check(retry)
        took = time.perf_counter() - started
        tracemalloc.start()  # a second check, for its memory: tracing slows Python down
        verify.check(retry)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert verdict.state == LineageState.VERIFIED, verdict
        verify.verify(retry)
        name = f"verify {retry.batch_id} ({LINES:,} lines of {LINES:,})"
        print(
            f"  {name:<52} {took:>6.2f} s {peak / 1e6:>6.1f} MB  {_verdict(took, TARGETS['verify'], 's')}, "
            f"{_verdict(peak / 1e6, TARGETS['verify_mb'], 'MB')}"
        )

    kept = ResultArchive.objects.get(batch=original)
    print("")
    print(f"  {'step':<52} {'time':>8} {'memory':>9}  target")
    for label, selection in (
        ("build a retry of 5,000 failed lines", RetrySelection("failed", ResultFilter())),
        (
            "build a retry of 1,000 (memory must not grow)",
            RetrySelection("filter", ResultFilter(outcome="failed", q="ticket-0")),
        ),
    ):
        tracemalloc.start()
        started = time.perf_counter()
        handle, count = submit.build_input(kept, selection)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        handle.close()
        name = f"{label}: {count:,}"
        print(f"  {name:<52} {took:>6.2f} s {peak / 1e6:>6.1f} MB  {_verdict(took, TARGETS['build'], 's')}")
    started = time.perf_counter()
    prepared = submit.prepare(original, kept, RetrySelection("failed", ResultFilter()), token=uuid.uuid4())
    took = time.perf_counter() - started
    assert prepared.form.is_valid(), prepared.form.errors
    name = "confirmation: build + validate + estimate (5,000)"
    print(f"  {name:<52} {took:>6.2f} s {'':>9}  {_verdict(took, TARGETS['build'], 's')}")

    client = Client()
    client.force_login(get_user_model().objects.create_user("bench"))
    base = reverse("retries:final", args=[original.batch_id])
    print("")
    print(
        f"  {'final results page (in-process)':<40} {'median':>8} {'p95':>8} {'cpu':>8} {'queries':>7}  target (median)"
    )
    for name, query in (
        ("first page", ""),
        ("page 250", "?page=250"),
        ("last page (500)", "?page=500"),
        ("still failing", "?show=failing"),
    ):
        median, p95, cpu, queries = _time(client, base + query)
        verdict = _verdict(median, TARGETS["page"], "ms")
        print(f"  {name:<40} {median:6.1f}ms {p95:6.1f}ms {cpu:6.1f}ms {queries:>7}  {verdict}")

    print("")
    print(f"  {'export of the merged table (streamed)':<40} {'first':>8} {'total':>8} {'size':>9} {'memory':>9}")
    for name, view in (("CSV, every line", "retries:final_csv"), ("JSONL, every line", "retries:final_jsonl")):
        tracemalloc.start()
        started = time.perf_counter()
        first_chunk, size = None, 0
        for chunk in client.get(reverse(view, args=[original.batch_id])).streaming_content:
            first_chunk = first_chunk or time.perf_counter() - started
            size += len(chunk)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  {name:<40} {first_chunk:>6.2f} s {took:>6.1f} s {size / 1e6:>6.1f} MB {peak / 1e6:>6.1f} MB")
    print("  (exports timed under tracemalloc, which slows Python several times)")
    return 0


def _time(client, url) -> tuple[float, float, float, int]:
    from django.db import connection

    for _warm_up in range(3):
        client.get(url)
    queries = []
    with connection.execute_wrapper(lambda execute, sql, *args: queries.append(sql) or execute(sql, *args)):
        client.get(url)
    times, cpu_times = [], []
    for _request in range(REPEATS):
        begun, begun_cpu = time.perf_counter(), time.thread_time()
        response = client.get(url)
        times.append((time.perf_counter() - begun) * 1000)
        cpu_times.append((time.thread_time() - begun_cpu) * 1000)
        assert response.status_code == 200, response.status_code
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], statistics.median(cpu_times), len(queries)


if __name__ == "__main__":
    sys.exit(main())
