"""Benchmark of the results app on a 50,000-line batch built by the sandbox (about 100 MB of output).

`python -m benchmarks.results` (run by `make bench`) works in a scratch folder (database, sandbox files, results
storage), never in yours. It measures, and prints beside the targets:
- fetching and indexing the batch's files over HTTP from the sandbox, in a fresh process: time and peak memory;
- the results page for several filters and pages, the request page, and the CSV export (time and memory).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from benchmarks import common
from benchmarks.common import rerun_in_scratch

SCRATCH_ENV = "BATCHBOARD_BENCH_RESULTS_SCRATCH"
TARGETS = {"fetch": 15.0, "memory": 150.0, "page": 50.0, "request": 30.0}
CHAT = "/v1/chat/completions"
REPEATS = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000, help="Lines in the batch (default: 50000).")
    parser.add_argument("--phase", choices=["all", "fetch"], default="all", help=argparse.SUPPRESS)
    parser.add_argument("--archive", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgresql",
        action="store_true",
        help="Use a throwaway PostgreSQL cluster (pg_virtualenv) instead of a scratch SQLite file.",
    )
    options = parser.parse_args()
    if not 100 <= options.lines <= 50_000:
        parser.error("--lines must be between 100 and 50000")
    if options.postgresql and "DATABASE_URL" not in os.environ:
        command = [sys.executable, "-m", "benchmarks.results", "--lines", str(options.lines), "--postgresql"]
        return subprocess.call(common.in_postgresql(command), cwd=common.ROOT)
    if not os.environ.get(SCRATCH_ENV):
        # Inside pg_virtualenv (--postgresql) the cluster's database is kept; otherwise a scratch SQLite file.
        database = {"DATABASE_URL": os.environ["DATABASE_URL"]} if options.postgresql else {}
        return rerun_in_scratch(
            "benchmarks.results",
            ["--lines", str(options.lines), *(["--postgresql"] if options.postgresql else [])],
            SCRATCH_ENV,
            SANDBOX_DROP_RATE="0.01",
            **database,
        )
    if options.phase == "fetch":
        # Set up only: migrations already ran in the parent, and loading them would add to this process's peak.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
        import django

        django.setup()
        return _fetch_phase(options.archive)
    common.ready_django()
    return _run(options.lines)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _fetch_phase(archive_id: int) -> int:
    """In a fresh process, so that its peak memory is the fetch's own: fetch and index one archive."""
    from batches import services
    from results import archive
    from results.models import ResultArchive

    baseline = _peak_rss_mb()
    timings = {}
    index = archive._index

    def timed_index(*args):
        begun = time.perf_counter()
        try:
            return index(*args)
        finally:
            timings["index"] = time.perf_counter() - begun

    archive._index = timed_index
    kept = ResultArchive.objects.select_related("batch").get(pk=archive_id)
    begun, begun_cpu = time.perf_counter(), time.process_time()
    archive.fetch_archive(kept, services.get_client())
    total, cpu = time.perf_counter() - begun, time.process_time() - begun_cpu
    kept.refresh_from_db()
    print(f"{kept.state} {total:.3f} {cpu:.3f} {timings.get('index', 0):.3f} {baseline:.1f} {_peak_rss_mb():.1f}")
    return 0


def build_batch(lines: int, *, created_ago: float = 10 * 86_400, speed: float = 1.0):
    """The batch, as the sandbox writes it: chat requests allowed 580 tokens (long answers), 2 % asking for more
    than the model allows (they fail, beside the sandbox's own ~3 % of failures), 1 % dropped from both files.
    Created `created_ago` seconds ago and run at `speed`: final, its files written, when this returns."""
    import json

    from sandbox import store

    now = time.time()
    path = Path(tempfile.mkstemp(dir=store.files_dir(), prefix=".bench-")[1])
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(1, lines + 1):
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are a support assistant. Answer in full paragraphs."},
                    {"role": "user", "content": f"Ticket {number}: summarise the customer's request and reply."},
                ],
                "max_tokens": 100_000 if number % 50 == 0 else 580,
            }
            line = {"custom_id": f"ticket-{number:05d}", "method": "POST", "url": CHAT, "body": body}
            handle.write(json.dumps(line) + "\n")
    input_file = store.store_file(path, filename="bench.jsonl", purpose="batch", now=now, expires_after=None)
    created = store.create_batch(
        input_file=input_file,
        endpoint=CHAT,
        metadata=None,
        output_expires_after=None,
        now=now - created_ago,
        speed=speed,
    )
    batch, _state = store.observe(created, now)
    return batch


def _serve():
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, get_internal_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    server.set_app(get_internal_wsgi_application())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _verdict(value: float, target: float, unit: str, why: str = "") -> str:
    """The target and whether `value` met it; when it did not, `why` (what the page had to read)."""
    if value <= target:
        return f"≤ {target:g} {unit}: ok"
    return f"≤ {target:g} {unit}: MISSED" + (f" ({why})" if why else "")


# Why a figure that misses its target does, by the start of its name: what the page has to read then.
WHY_MISSED = {
    "  the same, nothing kept": "on SQLite no index holds parts of a text: the search reads every line once, then its "
    "matches are kept for the next pages and request pages (results/matches.py)",
    "search answer text": "on SQLite the search reads every line's answer text (no index holds parts of a text)",
    "request page in a search, answer text": "the nearest matches are read outward from the row, line by line",
}


def _run(lines: int) -> int:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.test import Client
    from django.urls import reverse

    from batches import lookups
    from results.archive import request_archive
    from results.models import Outcome, ResultArchive
    from sandbox.models import SandboxFile

    print(f"results benchmark: {lines:,}-line batch, scratch folder {os.environ[SCRATCH_ENV]}")
    print(
        f"  {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start: on a shared machine wall-clock "
        "times grow with the load; CPU times much less."
    )
    begun = time.perf_counter()
    sandbox_batch = build_batch(lines)
    output = SandboxFile.objects.get(pk=sandbox_batch.output_file_id)
    errors = SandboxFile.objects.get(pk=sandbox_batch.error_file_id)
    print(
        f"  the sandbox wrote the batch in {time.perf_counter() - begun:.1f} s: output file "
        f"{output.bytes / 1e6:.1f} MB, error file {errors.bytes / 1e6:.1f} MB"
    )

    server = _serve()
    url = f"http://127.0.0.1:{server.server_port}/sandbox/v1"
    settings.SANDBOX_URL = settings.OPENAI_BASE_URL = url
    batch, _ = lookups.refresh_batch(sandbox_batch.id)
    kept = request_archive(batch)
    env = {**os.environ, "SANDBOX_URL": url}
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.results", "--phase", "fetch", "--archive", str(kept.pk)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    server.shutdown()
    if child.returncode:
        print(child.stdout, child.stderr)
        return 1
    state, total, cpu, index_s, baseline, peak = child.stdout.split()[-6:]
    total, cpu, index_s, peak = float(total), float(cpu), float(index_s), float(peak)
    kept = ResultArchive.objects.get(pk=kept.pk)
    counts = kept.summary["outcomes"]
    print(
        f"  kept: {state}; {kept.summary['rows']:,} rows: "
        + ", ".join(f"{counts.get(outcome, 0):,} {outcome}" for outcome in Outcome.values)
    )
    print("")
    print(f"  {'step':<44} {'figure':>10}  target")
    print(f"  {'fetch + store + index (fresh process)':<44} {total:>8.1f} s  {_verdict(total, TARGETS['fetch'], 's')}")
    print(f"  {'  of which indexing':<44} {index_s:>8.1f} s")
    print(f"  {'  CPU time of the fetching process':<44} {cpu:>8.1f} s")
    name = "peak memory (process RSS, Django included)"
    print(f"  {name:<44} {peak:>7.0f} MB  {_verdict(peak, TARGETS['memory'], 'MB')}")
    print(f"  {'  RSS before fetching':<44} {float(baseline):>7.0f} MB")

    user = get_user_model().objects.create_user("bench")
    client = Client()
    client.force_login(user)
    base = reverse("results:list", args=[batch.batch_id])
    code = next(iter(kept.summary["codes"]), "")
    last_page = (kept.summary["rows"] + 99) // 100
    pages = [
        ("first page", ""),
        (f"last page ({last_page:,})", f"?page={last_page}"),
        ("outcome=failed", "?outcome=failed"),
        ("outcome=missing, page 2", "?outcome=missing&page=2"),
        (f"code={code}", f"?code={code}"),
        ("search custom_id", "?q=ticket-4999"),
        # On SQLite a search's matches, when few, are kept in the cache (results/matches.py): read afresh here.
        ("  the same, nothing kept", "?q=ticket-4999"),
        ("search answer text", "?q=quarterly+plan&page=50"),
        ("htmx fragment", ""),
    ]
    print("")
    print(
        f"  {'page (Django test client, in-process)':<40} {'median':>8} {'p95':>8} {'cpu':>8} {'queries':>7}  "
        "target (median server time)"
    )
    for name, query in pages:
        headers = {"HTTP_HX_REQUEST": "true"} if name == "htmx fragment" else {}
        before = cache.clear if name.endswith("nothing kept") else None
        median, p95, cpu, queries = _time(client, base + query, headers, before=before)
        verdict = _verdict(median, TARGETS["page"], "ms", WHY_MISSED.get(name, ""))
        print(f"  {name:<40} {median:6.1f}ms {p95:6.1f}ms {cpu:6.1f}ms {queries:>7}  {verdict}")

    sample = kept.lines.order_by("?").values_list("position", flat=True)[:REPEATS]
    request_times, cpu_times = [], []
    for position in sample:
        url = reverse("results:request", args=[batch.batch_id, position])
        median, _p95, cpu, queries = _time(client, url, {}, repeats=5)
        request_times.append(median)
        cpu_times.append(cpu)
    median, cpu = statistics.median(request_times), statistics.median(cpu_times)
    verdict = _verdict(median, TARGETS["request"], "ms")
    name = f"request page ({REPEATS} random lines)"
    print(f"  {name:<40} {median:6.1f}ms {max(request_times):6.1f}ms {cpu:6.1f}ms {queries:>7}  {verdict}")
    # Within a search, a request page steps to the previous and next match: from the middle of the batch, for a
    # custom_id that matches 10 lines far away, and for answer text that matches a third of them. On SQLite the
    # matches of the first are kept in the cache (results/matches.py) by the results page's search above; "nothing
    # kept" is a request page opened with an empty cache (a shared link, or after the cache let them go).
    middle = kept.summary["rows"] // 2
    searches = (
        ("custom_id", "?q=ticket-4999", None),
        ("  the same, nothing kept", "?q=ticket-4999", cache.clear),
        ("answer text", "?q=quarterly+plan", None),
    )
    for name, query, before in searches:
        url = reverse("results:request", args=[batch.batch_id, middle]) + query
        median, p95, cpu, queries = _time(client, url, {}, repeats=10, before=before)
        name = name if name.startswith(" ") else f"request page in a search, {name}"
        verdict = _verdict(median, TARGETS["request"], "ms", WHY_MISSED.get(name, ""))
        print(f"  {name:<40} {median:6.1f}ms {p95:6.1f}ms {cpu:6.1f}ms {queries:>7}  {verdict}")
    print(f"  {'the lines on disk (table and indexes)':<40} {_lines_size():>6.1f} MB")

    print("")
    exports = [
        ("CSV export, every row", "export_csv", ""),
        ("JSONL export, every row", "export_jsonl", ""),
        ("CSV export, outcome=failed", "export_csv", "?outcome=failed"),
    ]
    print(f"  {'export (streamed)':<40} {'time':>8} {'cpu':>8} {'size':>9}")
    for name, view, query in exports:
        url = reverse(f"results:{view}", args=[batch.batch_id]) + query
        begun, begun_cpu = time.perf_counter(), time.thread_time()
        size = sum(len(chunk) for chunk in client.get(url).streaming_content)
        took, cpu = time.perf_counter() - begun, time.thread_time() - begun_cpu
        print(f"  {name:<40} {took:>6.1f} s {cpu:>6.1f} s {size / 1e6:>6.1f} MB")
    # Memory, traced separately (tracing slows Python down several times): the peak must not grow with the rows.
    for name, query in (("every row", ""), ("outcome=failed", "?outcome=failed")):
        tracemalloc.start()
        for _chunk in client.get(reverse("results:export_csv", args=[batch.batch_id]) + query).streaming_content:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  peak Python memory while exporting CSV, {name:<16} {peak / 1e6:>5.1f} MB  flat: independent of rows")
    return 0


def _lines_size() -> float:
    """Megabytes taken by the results' lines: PostgreSQL's table with its indexes, or the whole SQLite file."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_total_relation_size('results_resultline')")
            return int(cursor.fetchone()[0]) / 1e6
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute("PRAGMA page_size")
        return pages * cursor.fetchone()[0] / 1e6


def _time(client, url, headers, repeats=REPEATS, before=None) -> tuple[float, float, float, int]:
    """Median and p95 wall-clock time, median CPU time of the request's thread (less inflated by other load on a
    shared machine), and the number of queries, of GETs of `url`, each after calling `before` (untimed) if given."""
    from django.db import connection

    before = before or (lambda: None)
    for _warm_up in range(3):
        before()
        client.get(url, **headers)
    queries = []
    before()
    with connection.execute_wrapper(lambda execute, sql, *args: queries.append(sql) or execute(sql, *args)):
        client.get(url, **headers)
    times, cpu_times = [], []
    for _request in range(repeats):
        before()
        begun, begun_cpu = time.perf_counter(), time.thread_time()
        response = client.get(url, **headers)
        times.append((time.perf_counter() - begun) * 1000)
        cpu_times.append((time.thread_time() - begun_cpu) * 1000)
        assert response.status_code in (200, 286), response.status_code
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], statistics.median(cpu_times), len(queries)


if __name__ == "__main__":
    sys.exit(main())
