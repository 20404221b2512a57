"""Run the dashboard with its history kept: a background sync loop and a task worker next to Django's threaded
development server."""

import base64
import logging
import os
import secrets
import signal
import socket
import threading

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils.crypto import get_random_string
from django_tasks_db.management.commands.db_worker import Worker

from batches import sync

logger = logging.getLogger("batches.sync")

# How long the sync thread waits for the web server to accept connections before its first pass.
STARTUP_WAIT_SECONDS = 60.0


class _OnlyFailedRequests(logging.Filter):
    """Drops the development server's line for each request that succeeded (pages, fragments, static files and the
    sync loop's calls to the built-in sandbox): at the default verbosity the terminal shows changes and errors
    only. Requests answered 4xx or 5xx still show; -v 2 shows every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "status_code", 500) >= 400


class Command(BaseCommand):
    help = (
        "Serve the dashboard on --host/--port with Django's threaded development server, and keep the history "
        "meanwhile: a background thread runs the sync loop (a pass every BATCHBOARD_REFRESH_INTERVAL seconds while "
        "someone watches the list, every BATCHBOARD_HISTORY_INTERVAL seconds otherwise), starting once the server "
        "answers, because in sandbox mode the API is this very server. The terminal shows a line for each change "
        "and each error; -v 2 shows every pass and every request. A task worker runs beside it (keeping results, "
        "automatic retries), as `manage.py db_worker` does. In sandbox mode the sandbox's webhooks go to this "
        "server's own receiver, with a secret made for the run (`manage.py sandbox_webhooks`, in a thread). "
        "For production, run the web app under gunicorn, and "
        "`manage.py sync_batches --loop` and `manage.py db_worker` beside it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default: 8000).")

    def handle(self, *args, host, port, verbosity, **options):
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535; got {port}.")
        local = _reachable_address(host)
        url = f"http://{_url_host(local)}:{port}/"
        if settings.SANDBOX_MODE and "SANDBOX_URL" not in os.environ:
            # The sandbox is served by this server, so it lives on whatever port the server was given.
            settings.SANDBOX_URL = settings.OPENAI_BASE_URL = f"{url}sandbox/v1"
        if "BATCHBOARD_BASE_URL" not in os.environ:
            # Notifications link to batch pages under the dashboard's own address: this server's, on whatever port.
            settings.BATCHBOARD_BASE_URL = url.rstrip("/")
        if settings.SANDBOX_MODE and "EMAIL_HOST" not in os.environ:
            # Email destinations a new user tries on the sandbox are printed here, with no mail server to set up.
            settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
        webhooks_wired = _wire_sandbox_webhooks(url)
        detailed = verbosity >= 2
        if detailed:
            logging.getLogger("batches").setLevel(logging.DEBUG)
        else:
            logging.getLogger("django.server").addFilter(_OnlyFailedRequests())
        stop = threading.Event()
        worker = _task_worker()
        # In sandbox mode the loop, the tasks and the sandbox's webhooks all call this very server: each starts once
        # it answers. The sandbox's webhook sender is its own management command (the dashboard imports nothing of
        # the sandbox).
        background = {
            "batchboard-sync": lambda: sync.sync_loop(stop, quiet=not detailed),
            "batchboard-tasks": worker.run,
        }
        if webhooks_wired:
            background["batchboard-sandbox-webhooks"] = lambda: call_command("sandbox_webhooks")
        for name, run in background.items():
            threading.Thread(target=_once_server_answers, args=(stop, local, port, run), name=name, daemon=True).start()
        self.stdout.write(self.style.SUCCESS(f"batchboard is at {url}"))
        self.stdout.write(
            "History is being kept: a sync loop and a task worker run in the background (-v 2 shows every pass)."
        )
        # SIGTERM stops the server the way Ctrl-C does: runserver exits with status 0.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        addrport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            call_command(
                "runserver", addrport, use_reloader=False, use_threading=True, use_ipv6=":" in host, verbosity=verbosity
            )
        finally:
            stop.set()
            worker.running = False  # ends its loop after the task in hand (a daemon thread: exiting does not wait)


def _wire_sandbox_webhooks(url: str) -> bool:
    """In sandbox mode the sandbox sends its (first organisation's) webhooks to this server's receiver of the default
    connection, both sides sharing a secret made for this run (unless SANDBOX_WEBHOOK_URL says where else to send
    them): a batch shows final within a second of
    the sandbox finishing it, as it would with the API's webhooks."""
    if not (settings.SANDBOX_MODE and settings.SANDBOX_ENABLED):
        return False
    if not settings.SANDBOX_WEBHOOK_URL:
        secret = settings.SANDBOX_WEBHOOK_SECRET or settings.BATCHBOARD_WEBHOOK_SECRET or _new_webhook_secret()
        settings.SANDBOX_WEBHOOK_URL = f"{url}webhooks/openai/"
        settings.SANDBOX_WEBHOOK_SECRET = secret
        settings.BATCHBOARD_WEBHOOK_SECRET = settings.BATCHBOARD_WEBHOOK_SECRET or secret
    # The second organisation's webhooks go where SANDBOX_SECOND_WEBHOOK_URL says (a connection's own URL), if set.
    second = settings.SANDBOX_SECOND_WEBHOOK_URL and settings.SANDBOX_SECOND_WEBHOOK_SECRET
    return bool(settings.SANDBOX_WEBHOOK_SECRET or second)


def _new_webhook_secret() -> str:
    """A secret as the API makes them: whsec_ and base64 of 32 random bytes (REFERENCE §12.3)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _task_worker() -> Worker:
    return Worker(
        queue_names=["*"],
        # Half a second: a webhook's task (and so the batch's final state) follows its delivery at once.
        interval=0.5,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id=f"serve-{get_random_string(12)}",
        excluded_queue_names=[],
    )


def _once_server_answers(stop: threading.Event, host: str, port: int, run) -> None:
    """`run()` in this thread once the server accepts connections, unless we are stopping by then."""
    try:
        if _wait_for_server(stop, host, port) and not stop.is_set():
            run()
    finally:
        connections.close_all()


def _wait_for_server(stop: threading.Event, host: str, port: int) -> bool:
    """True once the server accepts connections; False if it never does (it failed to start) or we are stopping."""
    for _attempt in range(int(STARTUP_WAIT_SECONDS / 0.2)):
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            if stop.wait(0.2):
                return False
    logger.error("The web server did not start on %s:%s; the background sync is not running.", host, port)
    return False


def _reachable_address(host: str) -> str:
    """Where this machine reaches the server: a wildcard address listens on loopback too."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
