"""Server time and queries per page over a big cache: list, filtered list, search, table fragment, detail.

`python -m benchmarks.pages [--batches 10000] [--snapshots 100000] [--requests 50] [--explain]`

Fills a scratch database (never yours) with --batches batches and --snapshots snapshots, then prints the median and
95th percentile server time, the CPU time and the number of SQL queries of each page, measured in-process with
Django's test client while the cache is fresh; no request may call upstream (counted). Targets are printed beside
the figures. The list's cost under a sync loop and many pollers, at 100,000 batches, is in benchmarks.scale.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from contextlib import contextmanager
from datetime import UTC, datetime

from benchmarks import common

SNAPSHOTS_PER_BATCH_MAX = 50
# Roughly what a busy organisation's history looks like: mostly finished, a few percent still running.
STATUS_MIX = [
    ("completed", 80),
    ("cancelled", 9),
    ("failed", 5),
    ("expired", 3),
    ("in_progress", 2),
    ("validating", 0.5),
    ("finalizing", 0.3),
    ("cancelling", 0.2),
]
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "o4-mini-2025-04-16", "text-embedding-3-small")
TARGETS_MS = {"list": 25.0, "filtered list": 25.0, "search": 25.0, "table fragment": 10.0, "detail": 25.0}
# Why a page that misses its target does: what it has to read then.
WHY_MISSED = {
    "search": "the words of a search match any part of ids and metadata: the matching batches are scanned",
    "table fragment (changed)": "a final batch is recorded again before each request, so the final batches' figures "
    "are read again each time (benchmarks.production's cold case); a running batch's change is its 'after a change'",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pages", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000, help="Batches in the cache (default: 10000).")
    parser.add_argument("--snapshots", type=int, default=100_000, help="Snapshots in all (default: 100000).")
    parser.add_argument("--requests", type=int, default=50, help="Timed requests per page (default: 50).")
    parser.add_argument("--explain", action="store_true", help="Print the query plan of each list query.")
    options = parser.parse_args(argv)
    if options.batches < 1 or not 0 <= options.snapshots <= options.batches * SNAPSHOTS_PER_BATCH_MAX:
        parser.error(f"Use at least 1 batch and at most {SNAPSHOTS_PER_BATCH_MAX} snapshots per batch.")
    if options.requests < 1:
        parser.error("--requests must be at least 1.")
    common.setup()
    Pages().run(**vars(options))


class Pages:
    def run(self, *, batches, snapshots, requests, explain):
        from django.test import Client

        from batches.models import Batch, BatchSnapshot

        print(common.machine())
        started = time.perf_counter()
        detail_ids = _fill_cache(batches, snapshots)
        print(
            f"filled the cache with {Batch.objects.count():,} batches and {BatchSnapshot.objects.count():,} "
            f"snapshots in {time.perf_counter() - started:.1f} s"
        )
        client = Client()
        client.force_login(_operator())
        self._time_pages(client, detail_ids, requests, explain)

    def _time_pages(self, client, detail_ids, requests, explain):
        from django.conf import settings
        from django.core.cache import cache
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from django.urls import reverse
        from django.utils import timezone

        from batches import lookups
        from batches.freshness import LIST_STATE
        from batches.models import Batch, SyncState

        settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
        now = timezone.now()
        # A fresh list lease and freshly seen batches: every request reads the cache and none calls upstream.
        SyncState.objects.update_or_create(
            name=LIST_STATE, defaults={"claimed_at": now, "succeeded_at": now, "heartbeat_at": now, "watched_at": now}
        )
        Batch.objects.update(last_seen_at=now)
        # The detail page shows file sizes, fetched once per file and then cached; here they are known already.
        for row in Batch.objects.filter(batch_id__in=detail_ids):
            for file_id in (row.input_file_id, row.output_file_id, row.error_file_id):
                cache.set(lookups.file_size_key(row.connection_id, file_id), 123_456, None)
        list_url = reverse("batches:list")
        newest = Batch.objects.newest_first().filter(is_terminal=True).values_list("pk", flat=True).first()

        def change_a_batch():
            Batch.objects.filter(pk=newest).update(last_changed_at=timezone.now())

        running_url = reverse("batches:detail", args=[detail_ids[1]])

        def shown_key() -> str:
            """The key of the running batch's panel as shown now (it holds the 10 s clock step: read just before)."""
            html = _get(client, running_url, {}).content.decode()
            return re.search(r'"X-Batchboard-Shown": "(\w+)"', html).group(1)

        pages = [  # name, url, headers, what to do before each request (untimed)
            ("list", list_url, {}, None),
            ("filtered list", f"{list_url}?status=completed&endpoint=/v1/chat/completions", {}, None),
            ("search", f"{list_url}?q=nightly", {}, None),
            ("table fragment", list_url, {"HTTP_HX_REQUEST": "true"}, None),
            ("table fragment (changed)", list_url, {"HTTP_HX_REQUEST": "true"}, change_a_batch),
            ("detail", reverse("batches:detail", args=[detail_ids[0]]), {}, None),
            ("detail (running)", reverse("batches:detail", args=[detail_ids[1]]), {}, None),
            # A poll from a panel that shows the current rendering already: answered 204.
            ("detail poll (unchanged)", running_url, {"HTTP_HX_REQUEST": "true", "HTTP_X_BATCHBOARD_SHOWN": ""}, None),
        ]
        print("")
        print(
            f"Server time per page, Django test client in-process, {requests} requests each after 3 warm-ups; "
            "the cache is fresh (BATCHBOARD_REFRESH_INTERVAL=3600), so no request calls upstream. median and p95 are "
            "wall-clock; cpu is the median CPU time of the request's thread, which other load on the machine "
            "inflates less. Polls of unchanged data share one rendering of the table fragment (as many viewers "
            "polling one URL do); for 'table fragment (changed)' a batch changes before each request, so each "
            "one renders the table:"
        )
        print(f"  {'page':<24} {'median':>9} {'p95':>9} {'cpu':>9} {'queries':>8} {'bytes':>8}  target")
        with _count_upstream_calls() as upstream_calls:
            for name, url, headers, before in pages:
                before = before or (lambda: None)
                if "HTTP_X_BATCHBOARD_SHOWN" in headers:
                    headers = {**headers, "HTTP_X_BATCHBOARD_SHOWN": shown_key()}
                for _warm_up in range(3):
                    before()
                    _get(client, url, headers)
                before()
                with CaptureQueriesContext(connection) as queries:
                    size = len(_get(client, url, headers).content)
                captured = queries.captured_queries  # Read now: the next request clears the connection's log.
                times, cpu_times = [], []
                for _request in range(requests):
                    before()
                    begun, begun_cpu = time.perf_counter(), time.thread_time()
                    _get(client, url, headers)
                    times.append((time.perf_counter() - begun) * 1000)
                    cpu_times.append((time.thread_time() - begun_cpu) * 1000)
                median, p95 = statistics.median(times), common.percentile(times, 95)
                target = TARGETS_MS.get(name.split(" (")[0])
                verdict = f"≤ {target:g} ms median: {'ok' if median <= target else 'MISSED'}" if target else ""
                if target and median > target and name in WHY_MISSED:
                    verdict += f" ({WHY_MISSED[name]})"
                print(
                    f"  {name:<24} {median:7.1f}ms {p95:7.1f}ms {statistics.median(cpu_times):7.1f}ms "
                    f"{len(captured):>8} {size:>8}  {verdict}"
                )
                if explain and name in ("list", "filtered list", "search"):
                    self._explain(captured)
        print(f"  upstream calls during these requests: {upstream_calls['calls']} (expected 0)")

    def _explain(self, queries):
        from django.db import connection

        """Each list query's plan and its time to run and fetch (the debug log times only the execute call)."""
        with connection.cursor() as cursor:
            for query in queries:
                sql = query["sql"]
                if not sql.startswith("SELECT") or "batches_batch" not in sql:
                    continue
                cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
                plan = "; ".join(row[-1] for row in cursor.fetchall())
                begun = time.perf_counter()
                cursor.execute(sql)
                cursor.fetchall()
                took = (time.perf_counter() - begun) * 1000
                print(f"      {took:5.2f}ms  {sql[:110]}…\n               plan: {plan}")


def _operator():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    """A user who may cancel, so the list renders its selection column too (the heavier page)."""
    user, _ = get_user_model().objects.get_or_create(username="bench")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="batches"))
    return user


def _fill_cache(batches: int, snapshots: int) -> list[str]:
    """Bulk-insert the cache; returns a finished and a running batch id with their full histories, for the detail."""
    from batches.models import Batch, BatchSnapshot

    rng = random.Random(7)
    statuses = rng.choices([s for s, _ in STATUS_MIX], weights=[w for _, w in STATUS_MIX], k=batches)
    statuses[0], statuses[1] = "completed", "in_progress"
    steps = _steps_per_batch(statuses, snapshots)
    newest = int(time.time()) - 60
    ids = []
    for chunk_start in range(0, batches, 1000):
        rows, histories = [], []
        for n in range(chunk_start, min(chunk_start + 1000, batches)):
            created = newest - int(90 * 86_400 * n / batches)
            batch_id = f"batch_bench{n:06d}{rng.getrandbits(48):012x}"
            history = _history(batch_id, statuses[n], created, max(steps[n], 1), rng)
            rows.append(_cache_row(history[-1], first_seen=created, last_seen=created + 10 * len(history)))
            histories.append(history[: steps[n]])
            ids.append(batch_id)
        Batch.objects.bulk_create(rows)
        BatchSnapshot.objects.bulk_create(
            [
                _snapshot(row, payload, step)
                for row, history in zip(rows, histories, strict=True)
                for step, payload in enumerate(history)
            ],
            batch_size=2000,
        )
    return ids[:2]


def _steps_per_batch(statuses: list[str], snapshots: int) -> list[int]:
    """Snapshots per batch adding up to `snapshots`: a validating batch has one state, a failed one two."""
    cap = {"validating": 1, "failed": 2}
    steps = [0] * len(statuses)
    open_ended = [n for n, status in enumerate(statuses) if status not in cap]
    for n, status in enumerate(statuses):
        steps[n] = min(cap.get(status, SNAPSHOTS_PER_BATCH_MAX), snapshots // len(statuses))
    left = snapshots - sum(steps)
    while left > 0 and open_ended:
        for n in open_ended:
            if left and steps[n] < SNAPSHOTS_PER_BATCH_MAX:
                steps[n] += 1
                left -= 1
        open_ended = [n for n in open_ended if steps[n] < SNAPSHOTS_PER_BATCH_MAX]
    return steps


def _cache_row(payload: dict, *, first_seen: int, last_seen: int):
    from batches import services
    from batches.models import Batch, payload_digest

    row = Batch(batch_id=payload["id"])
    row._apply(services.ApiBatch.from_api(payload), payload_digest(payload), _at(last_seen))
    row.first_seen_at = _at(first_seen)
    row.last_seen_at = row.last_changed_at = _at(last_seen)
    return row


def _snapshot(row, payload: dict, step: int):
    from batches.models import BatchSnapshot, payload_digest

    counts = payload["request_counts"]
    return BatchSnapshot(
        batch=row,
        observed_at=_at(payload["created_at"] + 10 * step),
        status=payload["status"],
        total_requests=counts["total"],
        completed_requests=counts["completed"],
        failed_requests=counts["failed"],
        payload=payload,
        payload_hash=payload_digest(payload),
    )


def _at(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


def _history(batch_id: str, status: str, created: int, steps: int, rng: random.Random) -> list[dict]:
    """`steps` successive payloads of one batch: validating, in progress with growing counts, then `status`."""
    from batches import services

    total = rng.choice((100, 1000, 5000, 50_000))  # Enough requests for every step to differ.
    failed_share = rng.choice((0, 0, 0, 0.01, 0.2))
    endpoint = rng.choice(ENDPOINTS)
    model = MODELS[3] if endpoint == "/v1/embeddings" else rng.choice(MODELS[:3])
    metadata = {"description": rng.choice(("nightly eval", "backfill embeddings", "support triage", "weekly report"))}
    if rng.random() < 0.5:
        metadata["team"] = rng.choice(("search", "growth", "research"))
    suffix = batch_id[-12:]
    payloads = []
    for step in range(steps):
        current = status if step == steps - 1 else ("validating" if step == 0 else "in_progress")
        at = created + 10 * step
        if current in ("validating", "failed"):
            processed = 0
        elif current in ("finalizing", "completed"):
            processed = total
        else:  # in_progress, cancelling, cancelled, expired: part of the way
            processed = min(int(total * (step + 1) / (steps + 1)), total - 1)
        failed = int(processed * failed_share)
        stamps = dict.fromkeys(services.TIMESTAMP_FIELDS)
        stamps["created_at"] = created
        if current not in ("validating", "failed"):
            stamps["in_progress_at"] = created + 5
        if current in ("finalizing", "completed"):
            stamps["finalizing_at"] = at - 2
        if current in ("cancelling", "cancelled"):
            stamps["cancelling_at"] = at - 2
        if current in ("completed", "failed", "expired", "cancelled"):
            stamps[f"{current}_at"] = at
        files = current in ("completed", "expired", "cancelled")
        payloads.append(
            {
                "id": batch_id,
                "object": "batch",
                "endpoint": endpoint,
                "model": None if current == "validating" else model,
                "errors": None,
                "input_file_id": f"file-in{suffix}",
                "completion_window": "24h",
                "status": current,
                "output_file_id": f"file-out{suffix}" if files and processed > failed else None,
                "error_file_id": f"file-err{suffix}" if files and failed else None,
                "expires_at": created + 86_400,
                **stamps,
                "request_counts": {
                    "total": 0 if current == "validating" else total,
                    "completed": processed - failed,
                    "failed": failed,
                },
                "usage": {
                    "input_tokens": processed * 120,
                    "output_tokens": processed * 40,
                    "total_tokens": processed * 160,
                }
                if processed
                else None,
                "metadata": metadata,
            }
        )
    return payloads


def _get(client, url: str, headers: dict):
    response = client.get(url, **headers)
    if response.status_code not in (200, 204, 286):
        raise SystemExit(f"{url} answered {response.status_code}; the benchmark needs working pages.")
    return response


@contextmanager
def _count_upstream_calls():
    from batches import services

    counter = {"calls": 0}
    original = services.BatchClient._request

    def counting(self, *args, **kwargs):
        counter["calls"] += 1
        return original(self, *args, **kwargs)

    services.BatchClient._request = counting
    try:
        yield counter
    finally:
        services.BatchClient._request = original


if __name__ == "__main__":
    main()
