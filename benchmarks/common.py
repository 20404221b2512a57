"""What every benchmark shares: a scratch database (never yours), the machine's description, a server for the
dashboard and the sandbox that counts upstream calls, and a printed table of figures beside their targets.

A benchmark module calls `setup()` before importing anything from Django or the apps: it points DATABASE_URL at a
new SQLite file in a temporary folder (deleted at exit), sets up Django and migrates.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_OPTIONS = ["-o", "fsync=off", "-o", "synchronous_commit=off", "-o", "full_page_writes=off"]
PG_URL = 'DATABASE_URL="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE"'


def setup(**environment: str) -> Path:
    """A scratch database and sandbox folder for this process, Django set up and migrated; returns the folder."""
    scratch = Path(tempfile.mkdtemp(prefix="batchboard-bench-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    for key in [key for key in os.environ if key.startswith(("SANDBOX_", "OPENAI_", "BATCHBOARD_"))]:
        del os.environ[key]
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATABASE_URL": f"sqlite:///{scratch / 'bench.sqlite3'}",
            "SANDBOX_FILES_DIR": str(scratch / "sandbox-files"),
            "SANDBOX_SEED": "false",
            "BATCHBOARD_LOG_LEVEL": "WARNING",
            **environment,
        }
    )
    ready_django()
    return scratch


def ready_django():
    """Django set up on the database the environment names, migrated, answering the test client; returns settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    # Plain static URLs: the manifest storage would need a collectstatic run. Set before any storage is used: Django
    # reads STORAGES once.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    return settings


def rerun_in_scratch(module: str, args: list[str], marker: str, **environment: str) -> int:
    """Run `python -m <module> <args>` again in a child process whose database, sandbox files and kept results live in
    a new scratch folder (named in the environment variable `marker`, which tells the child it is the rerun)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"batchboard-bench-{module.rpartition('.')[2]}-"))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "DATABASE_URL"))}
    env.update(
        {
            marker: str(scratch),
            "DATABASE_URL": f"sqlite:///{scratch / 'bench.sqlite3'}",
            "SANDBOX_FILES_DIR": str(scratch / "sandbox-files"),
            "BATCHBOARD_RESULTS_DIR": str(scratch / "results"),
            "SANDBOX_SEED": "false",
            "BATCHBOARD_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            **environment,
        }
    )
    try:
        return subprocess.call([sys.executable, "-m", module, *args], env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def in_postgresql(command: list[str]) -> list[str]:
    """`command` inside a throwaway PostgreSQL cluster (created and removed by pg_virtualenv), with DATABASE_URL."""
    quoted = " ".join(f"'{part}'" for part in command)
    return ["pg_virtualenv", "-t", *PG_OPTIONS, "sh", "-c", f"{PG_URL} exec {quoted}"]


def run_child(command: list[str], environment: dict[str, str]) -> dict:
    """Run a benchmark's child process in a clean environment; returns the JSON object it printed last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "OPENAI_", "BATCHBOARD_", "REDIS"))}
    env.update(environment, DJANGO_SETTINGS_MODULE="dashboard.settings", BATCHBOARD_LOG_LEVEL="WARNING")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]  # pg_virtualenv talks too
    if done.returncode != 0 or not lines:
        sys.exit(f"{' '.join(command[:4])}... failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def batch_payload(batch_id: str, created: int, running: bool) -> dict:
    """An API batch object for bulk-filled caches: completed, or in progress when `running`."""
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "input_file_id": f"file-in{batch_id[-7:]}",
        "output_file_id": None if running else f"file-out{batch_id[-7:]}",
        "error_file_id": None,
        "completion_window": "24h",
        "status": "in_progress" if running else "completed",
        "created_at": created,
        "in_progress_at": created + 5,
        "expires_at": created + 86_400,
        "finalizing_at": None if running else created + 50,
        "completed_at": None if running else created + 60,
        "request_counts": {"total": 1000, "completed": 400 if running else 1000, "failed": 0},
        "metadata": {"description": f"nightly eval {batch_id[-4:]}"},
    }


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), load average {load}, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def percentile(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


class Table:
    """Figures printed beside their targets, each marked ok or MISSED."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, figure: str, value: str, target: str, met: bool | None) -> None:
        verdict = "" if met is None else ("ok" if met else "MISSED")
        self.rows.append((figure, value, target, verdict))

    def print(self) -> None:
        widths = [max(len(row[i]) for row in [("figure", "measured", "target", ""), *self.rows]) for i in range(3)]
        print()
        print(self.title)
        print(f"  {'figure':<{widths[0]}}  {'measured':<{widths[1]}}  {'target':<{widths[2]}}")
        for figure, value, target, verdict in self.rows:
            print(f"  {figure:<{widths[0]}}  {value:<{widths[1]}}  {target:<{widths[2]}}  {verdict}")


class UpstreamCounter:
    """Counts the calls that reach the sandbox, by kind (list, retrieve, other)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"list": 0, "retrieve": 0, "other": 0}

    def note(self, method: str, path: str) -> None:
        collection = "/sandbox/v1/batches"
        kind = "other"
        if method == "GET" and path.rstrip("/") == collection:
            kind = "list"
        elif method == "GET" and path.startswith(collection + "/"):
            kind = "retrieve"
        with self.lock:
            self.counts[kind] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def serve(counter: UpstreamCounter):
    """The dashboard and the sandbox on a free 127.0.0.1 port, in threads; the client is pointed at that sandbox."""
    from django.conf import settings
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, get_internal_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):
            pass

    application = get_internal_wsgi_application()

    def counting(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/sandbox/"):
            counter.note(environ["REQUEST_METHOD"], path)
        return application(environ, start_response)

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.daemon_threads = True
    server.set_app(counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    settings.SANDBOX_URL = settings.OPENAI_BASE_URL = f"{base}/sandbox/v1"
    return server, base


def wait_until_answering(url: str, what: str, timeout: float = 30.0) -> None:
    """Wait for a server this benchmark started to answer `url`; RuntimeError naming `what` if it never does."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url}")
