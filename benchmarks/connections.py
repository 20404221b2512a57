"""Ten connections of 10,000 batches each (issue 19): a pass per connection, the list across connections, 50 viewers
of different team scopes, against the sandbox.

`python -m benchmarks.connections [--connections 10] [--batches 10000] [--running 100] [--latency 0.05]
[--viewers 50] [--requests 60] [--no-postgresql] [--list-only]`

The sandbox has two organisations (keys sk-sandbox and sk-sandbox-second), so the ten connections are not ten
independent accounts: each organisation is seeded with --batches batches (the newest --running still running) and
the connections point at them in turn, five at each. Ids are unique per connection, so every connection imports and
keeps its own --batches rows, walks its own list and spends its own budget, as ten accounts would. Every API call
waits --latency seconds; the dashboard and the sandbox share one threaded server, where upstream calls are counted.

Passes: one connection alone is imported and its steady-state pass (after the import) measured; then the other nine
are added and imported, and every connection's steady-state pass is measured again, in upstream calls and queries.

List: in a child process per database (a scratch SQLite file; a throwaway PostgreSQL cluster from pg_virtualenv),
--connections x --batches batches are bulk-inserted, 1 % running, created over a month and interleaved across the
connections; the list page is timed for a superuser and for viewers of 1, 3 and all connections (teams). Then the
very same rows are moved into the one connection of a single-key install (the default, open to everyone) and the
superuser's and a viewer's list are timed again: that is the one-connection list each is compared with. The two
layouts alternate LIST_ROUNDS times, so that the machine's changing load falls on both alike.

Viewers: --viewers signed-in viewers open the list and a running batch's detail page at once, over HTTP, first all
in one team (the same scope), then each in a team of their own that grants a different set of connections, then
the latter again with the shared cache emptied first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from datetime import timedelta

from benchmarks import common

REFRESH_INTERVAL = 2.0
VIEWERS_INTERVAL = 60.0
RUNNING_SHARE = 100  # in the list's fill, one batch in this many is running
KEY_VARIABLES = ("BENCH_SANDBOX_KEY", "BENCH_SANDBOX_SECOND_KEY")  # where each connection's key is, by organisation
VIEWER_SCOPES = (1, 3, 10)
WARM_UP = 3
LIST_ROUNDS = 5
BATCH_TABLE = re.compile(r"\bbatches_batch\b")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connections", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10, help="Connections (default: 10).")
    parser.add_argument("--batches", type=int, default=10_000, help="Batches per connection (default: 10000).")
    parser.add_argument("--running", type=int, default=100, help="Running batches per connection (default: 100).")
    parser.add_argument("--latency", type=float, default=0.05, help="Seconds added to every API call.")
    parser.add_argument("--viewers", type=int, default=50, help="Viewers opening pages at once (default: 50).")
    parser.add_argument("--requests", type=int, default=60, help="Timed list renders per case (default: 60).")
    parser.add_argument("--no-postgresql", action="store_true", help="Time the list on SQLite only.")
    parser.add_argument("--list-only", action="store_true", help="Time the list only, without passes and viewers.")
    parser.add_argument("--child", choices=["list"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections < 3:
        parser.error("--connections must be at least 3 (viewers of 1, 3 and all of them are compared)")
    if args.child == "list":
        print(json.dumps(_measure_list(args.connections, args.batches, args.requests)))
        return 0
    common.setup(
        BATCHBOARD_REFRESH_INTERVAL=str(REFRESH_INTERVAL),
        BATCHBOARD_UPSTREAM_BUDGET="1000000",
        SANDBOX_LATENCY=str(args.latency),
    )
    print(common.machine())
    if not args.list_only:
        _passes_and_viewers(args)
    _lists(args)
    return 0


# --- Passes and viewers, in this process, against the sandbox -----------------------------------------------------


def _passes_and_viewers(args) -> None:
    from django.conf import settings
    from django.db.models import Count

    from batches.models import Batch, Connection
    from sandbox import organisations, seed

    begun = time.monotonic()
    for organisation in (organisations.FIRST, organisations.SECOND):
        seed.seed_scale(args.batches, args.running, time.time(), organisation=organisation)
    print(
        f"seeded the sandbox's two organisations with {args.batches:,} batches each ({args.running} running) "
        f"in {time.monotonic() - begun:.1f} s"
    )
    os.environ[KEY_VARIABLES[0]] = settings.SANDBOX_API_KEY
    os.environ[KEY_VARIABLES[1]] = settings.SANDBOX_SECOND_API_KEY
    counter = common.UpstreamCounter()
    server, base = common.serve(counter)
    logging.getLogger("audit").setLevel(logging.WARNING)  # a line per benchmark user otherwise (after serve's setup)
    # The single-key settings' connection stays out of the way: not walked, not open to every viewer.
    Connection.objects.default()
    Connection.objects.filter(slug="default").update(paused=True, open_to_everyone=False)
    table = common.Table(
        f"{args.connections} connections of {args.batches:,} batches ({args.running} running), "
        f"{args.latency * 1000:g} ms per API call; the connections point at the sandbox's two organisations in turn"
    )

    # 1. One connection alone: its import, then its steady-state pass.
    first = _connection(0, settings.SANDBOX_URL)
    one_import = _import(first, counter)
    alone = _steady_pass(first, counter)

    # 2. Nine more, each imported; then every connection's steady-state pass.
    imports = [one_import]
    for number in range(1, args.connections):
        connection = _connection(number, settings.SANDBOX_URL)
        traced = number == args.connections - 1
        imports.append(_import(connection, counter, traced=traced))
    connections = list(Connection.objects.exclude(slug="default").order_by("slug"))
    per_connection = [_steady_pass(connection, counter) for connection in connections]
    traced_pass = _steady_pass(connections[-1], counter, traced=True)

    counts = Batch.objects.values("connection").annotate(rows=Count("pk"))
    rows = sorted(count["rows"] for count in counts)
    table.add(
        "rows kept per connection after the imports",
        f"{rows[0]:,} to {rows[-1]:,} in {len(rows)} connections ({sum(rows):,} in all)",
        f"{args.batches:,} each",
        rows[0] == rows[-1] == args.batches and len(rows) == args.connections,
    )
    import_calls = [record["calls"] for record in imports]
    table.add(
        "import of one connection, upstream calls",
        f"{import_calls[0]} alone; {min(import_calls[1:])} to {max(import_calls[1:])} each of the other "
        f"{args.connections - 1} ({statistics.median(record['seconds'] for record in imports):.0f} s median)",
        f"≤ ceil({args.batches:,}/100) + 5 = {-(-args.batches // 100) + 5}",
        max(import_calls) <= -(-args.batches // 100) + 5,
    )
    worst_calls = max(record["calls"] for record in per_connection)
    worst_queries = max(record["queries"] for record in per_connection)
    table.add(
        "steady pass, upstream calls: 1 connection / each of 10",
        f"{alone['calls']} / {_spread([record['calls'] for record in per_connection])}"
        f" (ratio {worst_calls / max(alone['calls'], 1):.2f})",
        "each ≤ the one connection's",
        worst_calls <= alone["calls"],
    )
    table.add(
        "steady pass, queries: 1 connection / each of 10",
        f"{alone['queries']} / {_spread([record['queries'] for record in per_connection])}"
        f" (ratio {worst_queries / max(alone['queries'], 1):.2f})",
        "each ≤ 1.1 x the one connection's",
        worst_queries <= 1.1 * alone["queries"],
    )
    seconds = statistics.median(record["seconds"] for record in per_connection)
    table.add(
        "steady pass, time: 1 connection / median of 10",
        f"{alone['seconds']:.2f} s / {seconds:.2f} s (ratio {seconds / alone['seconds']:.2f}; "
        f"{statistics.median(record['changed'] for record in per_connection):.0f} changed per pass)",
        "printed",
        None,
    )
    table.add(
        "memory: tracemalloc peak of an import / a steady pass",
        f"{imports[-1]['peak'] / 2**20:.1f} MiB / {traced_pass['peak'] / 2**20:.1f} MiB; "
        f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
        "bounded: independent of the number of connections and rows",
        None,
    )

    # 3. Viewers of one scope, then of different scopes, open the list and a running batch's detail page. One
    # refresh interval spans each round (a crowd of 50 on one threaded server takes seconds): a retrieve per interval
    # is the coalescing's promise, so each round may cost one.
    settings.BATCHBOARD_REFRESH_INTERVAL = VIEWERS_INTERVAL
    _open_running_detail(connections[0])  # as an earlier viewer would have: the input file's size is known
    same = _viewers(base, counter, connections, args.viewers, different_scopes=False)
    different = _viewers(base, counter, connections, args.viewers, different_scopes=True)
    cold = _viewers(base, counter, connections, args.viewers, different_scopes=True, cold=True)
    table.add(
        f"{args.viewers} viewers of the same scope: the list, then a running batch's detail",
        _describe_viewers(same),
        f"no list call; 1 retrieve (coalesced, interval {VIEWERS_INTERVAL:g} s); 0 errors",
        same["by_kind"]["retrieve"] == 1 and same["by_kind"]["list"] == 0 and not same["failures"],
    )
    table.add(
        f"{args.viewers} viewers of {different['scopes']} different scopes: the same pages",
        _describe_viewers(different),
        f"≤ the same scope's {same['calls']} upstream calls; 0 errors",
        different["calls"] <= same["calls"] and not different["failures"],
    )
    table.add(
        f"the same {args.viewers} viewers of different scopes, shared cache emptied first",
        _describe_viewers(cold),
        "printed: the input file's size is looked up again ('other')",
        None,
    )
    server.shutdown()
    table.print()


def _connection(number: int, sandbox_url: str):
    from batches.models import Connection, ConnectionKind, ConnectionSource

    return Connection.objects.create(
        name=f"Bench {number:02d}",
        slug=f"bench-{number:02d}",
        kind=ConnectionKind.OPENAI,
        source=ConnectionSource.ADMIN,
        base_url=sandbox_url,
        api_key_env=KEY_VARIABLES[number % 2],
    )


def _import(connection, counter: common.UpstreamCounter, *, traced: bool = False) -> dict:
    """The connection's passes until its import is done (as the sync loop runs them, back to back)."""
    from batches import sync
    from batches.models import SyncState

    before = counter.total()
    begun = time.monotonic()
    if traced:
        tracemalloc.start()
    try:
        for _ in range(1000):
            outcome = sync.run_pass(connection=connection, force=True)
            if outcome.error:
                raise SystemExit(f"A pass of {connection.slug} failed: {outcome.describe()}")
            if SyncState.objects.named(connection.list_state).import_done_at is not None:
                break
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()
    return {"calls": counter.total() - before, "seconds": time.monotonic() - begun, "peak": peak}


def _steady_pass(connection, counter: common.UpstreamCounter, *, traced: bool = False) -> dict:
    """A steady-state pass of the connection (one pass first, so the one measured follows one a moment before)."""
    from django.db import connection as database
    from django.test.utils import CaptureQueriesContext

    from batches import sync

    sync.run_pass(connection=connection, force=True)
    before = counter.total()
    database.queries_log.clear()  # a bounded deque: once full, a capture would count nothing
    if traced:
        tracemalloc.start()
    try:
        with CaptureQueriesContext(database) as queries:
            outcome = sync.run_pass(connection=connection, force=True)
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()
    if outcome.error or not outcome.ran:
        raise SystemExit(f"The steady pass of {connection.slug} did not run: {outcome.describe()}")
    return {
        "calls": counter.total() - before,
        "queries": len(queries),
        "seconds": outcome.seconds,
        "changed": outcome.changed,
        "peak": peak,
    }


def _spread(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)} to {max(values)}"


def _viewers(
    base: str, counter: common.UpstreamCounter, connections: list, viewers: int, *, different_scopes: bool, cold=False
):
    """`viewers` users open the list and then the same running batch of the first connection, all at once; the batch
    is due for a refresh. Every scope includes the first connection. The shared cache holds what an earlier viewer
    left there (the input file's size), unless `cold`: then it is emptied first."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.cache import cache
    from django.test import Client
    from django.utils import timezone

    from batches.models import Batch

    first = connections[0]
    kind = ("cold-" if cold else "") + ("different" if different_scopes else "same")
    teams = []
    for number in range(viewers if different_scopes else 1):
        team = Group.objects.create(name=f"bench-{kind}-{number}")
        # Different scopes: the first connection and a different subset of the others (the bits of number + 1).
        granted = [first, *(c for bit, c in enumerate(connections[1:]) if (number + 1) >> bit & 1)]
        team.connections_viewed.set(granted if different_scopes else connections)
        teams.append(team)
    cookies = []
    for number in range(viewers):
        user = get_user_model().objects.create_user(f"bench-{kind}-{number}", password=None)
        user.groups.set([teams[number % len(teams)]])
        client = Client()
        client.force_login(user)
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}")
    running = Batch.objects.filter(connection=first, is_terminal=False).order_by("-created_at").first()
    Batch.objects.filter(pk=running.pk).update(
        last_seen_at=timezone.now() - timedelta(minutes=5), refresh_claimed_at=None
    )
    if cold:
        cache.clear()
    urls = [f"{base}/batches/", f"{base}/batches/{running.batch_id}/?connection={first.slug}"]
    failures: list[str] = []
    times: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(viewers)

    def view(cookie: str) -> None:
        start.wait()
        for url in urls:
            begun = time.perf_counter()
            request = urllib.request.Request(url, headers={"Cookie": cookie})  # noqa: S310 - our own server
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                    response.read()
                    failed = "" if response.status == 200 else str(response.status)
            except OSError as exc:
                failed = type(exc).__name__
            with lock:
                times.append((time.perf_counter() - begun) * 1000)
                if failed:
                    failures.append(failed)

    before = counter.snapshot()
    threads = [threading.Thread(target=view, args=(cookie,)) for cookie in cookies]
    for thread in threads:
        thread.start()
    begun = time.monotonic()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - begun
    after = counter.snapshot()
    calls = {kind: after[kind] - before[kind] for kind in after}
    return {
        "calls": sum(calls.values()),
        "by_kind": calls,
        "failures": failures,
        "median": statistics.median(times),
        "p95": common.percentile(times, 95),
        "scopes": len({tuple(sorted(c.pk for c in team.connections_viewed.all())) for team in teams}),
        "seconds": seconds,
    }


def _open_running_detail(connection) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from batches.models import Batch

    running = Batch.objects.filter(connection=connection, is_terminal=False).order_by("-created_at").first()
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("bench-earlier-viewer", password=None))
    response = client.get(f"/batches/{running.batch_id}/?connection={connection.slug}")
    if response.status_code != 200:
        raise SystemExit(f"A running batch's page answered {response.status_code}.")


def _describe_viewers(measured: dict) -> str:
    kinds = measured["by_kind"]
    failures = measured["failures"]
    return (
        f"{measured['calls']} upstream calls ({kinds['list']} list, {kinds['retrieve']} retrieve, "
        f"{kinds['other']} other) in {measured['seconds']:.1f} s; page median {measured['median']:.0f} ms, "
        f"p95 {measured['p95']:.0f} ms; "
        f"{len(failures)} errors" + (f" ({', '.join(sorted(set(failures))[:3])})" if failures else "")
    )


# --- The list across connections, in a child process per database ------------------------------------------------


def _lists(args) -> None:
    own = [sys.executable, "-m", "benchmarks.connections"]
    child_args = [
        *("--child", "list", "--connections", str(args.connections)),
        *("--batches", str(args.batches), "--requests", str(args.requests)),
    ]
    total = args.connections * args.batches
    print(f"\nFilling a scratch SQLite database with {total:,} batches in {args.connections} connections...")
    results = {}
    with tempfile.TemporaryDirectory(prefix="batchboard-bench-") as scratch:
        results["SQLite"] = common.run_child(
            [*own, *child_args], {"DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3"}
        )
    if args.no_postgresql:
        print("PostgreSQL: skipped (--no-postgresql).")
    elif shutil.which("pg_virtualenv") is None:
        print("PostgreSQL: skipped (no pg_virtualenv; `make bench` installs postgresql).")
    else:
        print("... and a throwaway PostgreSQL cluster")
        results["PostgreSQL"] = common.run_child(common.in_postgresql([*own, *child_args]), {})
    for database, figures in results.items():
        _print_list_table(database, figures, args)


def _print_list_table(database: str, figures: dict, args) -> None:
    total = args.connections * args.batches
    table = common.Table(
        f"The list page over {total:,} batches on {database}: {args.connections} connections of {args.batches:,} "
        f"vs the same rows in one connection (median and p95 of {args.requests} renders, in-process)"
    )
    for case, measured in figures["cases"].items():
        baseline = figures["baselines"][measured["baseline"]]
        ratio = measured["median"] / baseline["median"]
        table.add(
            case,
            f"{measured['median']:.1f} ms (p95 {measured['p95']:.1f}), {_queries(measured)}; one connection "
            f"({measured['baseline']}): {baseline['median']:.1f} ms (p95 {baseline['p95']:.1f}), {_queries(baseline)}; "
            f"ratio {ratio:.2f}",
            "median ≤ 1.10 x one connection's; no more queries over batches",
            ratio <= 1.10 and measured["batch_queries"] <= baseline["batch_queries"],
        )
    table.print()
    for case, plan in figures["plans"].items():
        print(f"  query plan of the list's page of rows, {case}:")
        for line in plan:
            print(f"    {line}")


def _queries(measured: dict) -> str:
    return (
        f"{measured['queries']} queries ({measured['batch_queries']} over batches, "
        f"{measured['database_median']:.1f} ms in the database)"
    )


def _measure_list(connections: int, per_connection: int, requests: int) -> dict:
    """The list timed over the rows in `connections` connections and over the same rows in one, alternating between
    the two layouts LIST_ROUNDS times so that the machine's changing load falls on both alike."""
    os.environ.setdefault("SANDBOX_SEED", "false")
    settings = common.ready_django()
    logging.getLogger("audit").setLevel(logging.WARNING)
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from batches.models import Connection

    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing may call upstream: it would fail here
    default = Connection.objects.default()
    _fill(default, connections * per_connection)
    superuser = get_user_model().objects.create_superuser("bench-admin", password=None)
    teams = {}
    for scope in sorted({min(scope, connections) for scope in VIEWER_SCOPES}):
        teams[scope] = Group.objects.create(name=f"bench-{scope}")
        viewer = get_user_model().objects.create_user(f"bench-viewer-{scope}", password=None)
        viewer.groups.set([teams[scope]])
    plain = get_user_model().objects.create_user("bench-viewer", password=None)
    split_cases = {f"superuser, {connections} connections": (superuser, "superuser")}
    for scope in teams:
        case = f"viewer of {scope} connection{'s' if scope > 1 else ''} ({scope * per_connection:,} batches)"
        split_cases[case] = (get_user_model().objects.get(username=f"bench-viewer-{scope}"), "viewer")
    one_cases = {"superuser": superuser, "viewer": plain}
    timed: dict[str, dict] = {}
    per_round = max(requests // LIST_ROUNDS, 1)
    for _round in range(LIST_ROUNDS):
        made = _split(default, connections, teams)
        for case, (user, _baseline) in split_cases.items():
            _add_renders(timed, case, user, per_round)
        _merge(default, made)
        for case, user in one_cases.items():
            _add_renders(timed, f"one connection: {case}", user, per_round)
    cases = {case: {**_summary(timed[case]), "baseline": baseline} for case, (_user, baseline) in split_cases.items()}
    baselines = {case: _summary(timed[f"one connection: {case}"]) for case in one_cases}
    plans = {case: timed[case]["plan"] for case in split_cases if case.startswith("viewer")}
    plans["one connection (any viewer)"] = timed["one connection: viewer"]["plan"]
    return {"cases": cases, "baselines": baselines, "plans": plans}


def _fill(default, total: int) -> None:
    """Bulk-insert `total` batches into the default connection, created over a month, newest first; one in
    RUNNING_SHARE of each connection's is running once _split deals them out (row n to connection n mod count)."""
    from django.db import connection as database
    from django.utils import timezone

    from batches import services
    from batches.models import Batch, payload_digest

    newest = int(time.time()) - 60
    spacing = 30 * 86_400 / total
    now = timezone.now()
    for start in range(0, total, 2000):
        rows = []
        for n in range(start, min(start + 2000, total)):
            payload = common.batch_payload(
                f"batch_bench{n:08d}", int(newest - n * spacing), running=n % RUNNING_SHARE == RUNNING_SHARE // 2
            )
            row = Batch(connection=default, batch_id=payload["id"], first_seen_at=now)
            row._apply(services.ApiBatch.from_api(payload), payload_digest(payload), now)
            row.last_seen_at = row.last_changed_at = now
            rows.append(row)
        Batch.objects.bulk_create(rows)
    _settle(database)


def _split(default, count: int, teams: dict) -> list:
    """Deal the rows out to `count` new connections (row n to connection n mod count), each with a fresh sync
    state; the teams of scope k view the first k; the default connection is open to no one."""
    from django.core.cache import cache
    from django.db import connection as database
    from django.utils import timezone

    from batches.models import Batch, Connection, ConnectionSource, SyncState

    made = [
        Connection.objects.create(
            name=f"Bench {number:02d}",
            slug=f"bench-{number:02d}",
            source=ConnectionSource.ADMIN,
            base_url="http://127.0.0.1:9/v1",
            api_key_env="BENCH_UNUSED_KEY",
        )
        for number in range(count)
    ]
    first = Batch.objects.order_by("pk").values_list("pk", flat=True).first()
    table = database.ops.quote_name(Batch._meta.db_table)
    with database.cursor() as cursor:
        for number, connection in enumerate(made):
            cursor.execute(
                f"UPDATE {table} SET connection_id = %s WHERE (id - %s) %% %s = %s",  # noqa: S608 - our own names
                [connection.pk, first, count, number],
            )
    now = timezone.now()
    for connection in made:
        SyncState.objects.update_or_create(
            name=connection.list_state, defaults={"claimed_at": now, "succeeded_at": now, "import_done_at": now}
        )
    Connection.objects.filter(pk=default.pk).update(open_to_everyone=False)
    for scope, team in teams.items():
        team.connections_viewed.set(made[:scope])
    _settle(database)
    cache.clear()
    return made


def _merge(default, made: list) -> None:
    """Every row back in the default connection, open to every signed-in user, and the others gone: a single-key
    install holding the same rows."""
    from django.core.cache import cache
    from django.db import connection as database

    from batches.models import Batch, Connection, SyncState

    Batch.objects.update(connection=default)
    SyncState.objects.filter(name__in=[connection.list_state for connection in made]).delete()
    Connection.objects.filter(pk__in=[connection.pk for connection in made]).delete()
    Connection.objects.filter(pk=default.pk).update(open_to_everyone=True)
    _settle(database)
    cache.clear()


def _settle(database) -> None:
    if database.vendor == "postgresql":
        with database.cursor() as cursor:
            # What autovacuum does within a minute of a table this size filled or rewritten.
            cursor.execute("VACUUM ANALYZE")


def _add_renders(timed: dict, case: str, user, requests: int) -> None:
    measured = _time_list(user, requests)
    entry = timed.setdefault(case, {"times": [], "database_times": []})
    entry["times"].extend(measured.pop("times"))
    entry["database_times"].extend(measured.pop("database_times"))
    entry.update(measured)


def _summary(entry: dict) -> dict:
    times = entry["times"]
    return {
        "median": statistics.median(times),
        "p95": common.percentile(times, 95),
        "database_median": statistics.median(entry["database_times"]),
        "queries": entry["queries"],
        "batch_queries": entry["batch_queries"],
    }


def _time_list(user, requests: int) -> dict:
    """Wall-clock milliseconds of `requests` renders of the list page (after WARM_UP), and of their queries."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(user)
    times, database_times = [], []
    for attempt in range(requests + WARM_UP):
        connection.queries_log.clear()  # a bounded deque: once full, a capture would count nothing
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/batches/")
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"/batches/ answered {response.status_code} for {user.username}")
        if attempt >= WARM_UP:
            times.append(elapsed)
            database_times.append(sum(float(query["time"]) for query in queries.captured_queries) * 1000)
    return {
        "times": times,
        "database_times": database_times,
        "queries": len(queries),
        "batch_queries": sum(bool(BATCH_TABLE.search(query["sql"])) for query in queries.captured_queries),
        "plan": _plan(queries),
    }


def _plan(queries) -> list[str]:
    """The database's plan for the query of the list's page of rows, as the last render sent it."""
    from django.db import connection

    rows = [query["sql"] for query in queries.captured_queries if "LIMIT 50" in query["sql"]]
    if not rows:
        return ["(no query with LIMIT 50 found)"]
    prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + rows[0])
        plan = cursor.fetchall()
    return [" ".join(str(part) for part in line) for line in plan]


if __name__ == "__main__":
    sys.exit(main())
