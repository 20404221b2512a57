"""Server time and queries of the JSON API's list over a big cache: first page, filtered, search, a deep cursor page,
and a batch's detail, each with a personal access token.

`python -m benchmarks.api [--batches 100000] [--snapshots 100000] [--requests 50]`

Fills a scratch database (never yours) as benchmarks.pages does, makes a token for a user who may see every batch,
and prints the median and 95th percentile server time and the SQL queries of each request, measured in-process with
Django's test client; no request may call upstream (counted). The cursor is a keyset, so the 50th page should cost
what the first does. Target (issue 21): the list at p50 ≤ 25 ms over 100,000 batches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

from benchmarks import common
from benchmarks.pages import _count_upstream_calls, _fill_cache, _operator

TARGET_MS = 25.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100_000, help="Batches in the cache (default: 100000).")
    parser.add_argument("--snapshots", type=int, default=100_000, help="Snapshots in all (default: 100000).")
    parser.add_argument("--requests", type=int, default=50, help="Timed requests per case (default: 50).")
    parser.add_argument("--verbose", action="store_true", help="Print each request's SQL.")
    options = parser.parse_args(argv)
    if options.batches < 5000 or options.requests < 1:
        parser.error("Use at least 5000 batches (the deep page is the 50th of 100) and 1 request.")
    common.setup()
    run(**vars(options))


def run(*, batches: int, snapshots: int, requests: int, verbose: bool) -> None:
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from api.models import SCOPES, ApiToken
    from batches.models import Batch

    print(common.machine())
    started = time.perf_counter()
    detail_ids = _fill_cache(batches, snapshots)
    print(f"filled the cache with {Batch.objects.count():,} batches in {time.perf_counter() - started:.1f} s")
    settings.BATCHBOARD_API_TOKEN_PER_MINUTE = 100_000
    Batch.objects.update(last_seen_at=timezone.now())
    _token, secret = ApiToken.make(
        _operator(), name="bench", scopes=SCOPES, expires_at=timezone.now() + timedelta(days=1)
    )
    client = Client(headers={"Authorization": f"Bearer {secret}"})

    def get(url: str, query: dict | None = None):
        response = client.get(url, query or {})
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.content[:200]!r}")
        return response

    cursor = ""
    for _page in range(49):
        cursor = get("/api/v1/batches", {"limit": 100, "cursor": cursor}).json()["next_cursor"]
    cases = [
        ("list", "/api/v1/batches", {}),
        ("list, 100 a page", "/api/v1/batches", {"limit": 100}),
        ("filtered list", "/api/v1/batches", {"status": "completed", "endpoint": "/v1/chat/completions"}),
        ("search", "/api/v1/batches", {"q": "nightly"}),
        ("50th page by cursor", "/api/v1/batches", {"limit": 100, "cursor": cursor}),
        ("detail", f"/api/v1/batches/{detail_ids[0]}", {}),
        ("timeline", f"/api/v1/batches/{detail_ids[0]}/timeline", {}),
    ]
    print(f"\nServer time per request with a token, {requests} requests each after 3 warm-ups:")
    print(f"  {'request':<22} {'median':>9} {'p95':>9} {'queries':>8}  target")
    with _count_upstream_calls() as upstream_calls:
        for name, url, query in cases:
            for _warm_up in range(3):
                get(url, query)
            with CaptureQueriesContext(connection) as queries:
                get(url, query)
            captured = queries.captured_queries  # Read now: the next request clears the connection's log.
            times = []
            for _request in range(requests):
                begun = time.perf_counter()
                get(url, query)
                times.append((time.perf_counter() - begun) * 1000)
            median, p95 = statistics.median(times), common.percentile(times, 95)
            verdict = f"≤ {TARGET_MS:g} ms median: {'ok' if median <= TARGET_MS else 'MISSED'}"
            print(f"  {name:<22} {median:7.1f}ms {p95:7.1f}ms {len(captured):>8}  {verdict}")
            if verbose:
                for entry in captured:
                    print(f"      {entry['time']}s  {entry['sql'][:150]}")
    print(f"  upstream calls during these requests: {upstream_calls['calls']} (expected 0)")


if __name__ == "__main__":
    main()
