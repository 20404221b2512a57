"""Run the dashboard with its history kept: a background sync loop next to Django's threaded development server."""

import logging
import os
import signal
import socket
import threading

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from batches import upstream

logger = logging.getLogger("batches.sync")

# How long the sync thread waits for the web server to accept connections before its first pass.
STARTUP_WAIT_SECONDS = 60.0


class Command(BaseCommand):
    help = (
        "Serve the dashboard on --host/--port with Django's threaded development server, and keep the history "
        "meanwhile: a background thread refreshes the list every --interval seconds (sharing the lease with "
        "viewers' page loads), starting once the server answers, because in sandbox mode the API is this very "
        "server. For production, run the web app under gunicorn and `manage.py sync_batches --loop` beside it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default: 8000).")
        parser.add_argument(
            "--interval", type=float, default=5.0, help="Seconds between background sync passes (default: 5)."
        )

    def handle(self, *args, host, port, interval, **options):
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535; got {port}.")
        if not 0 < interval <= 86_400:
            raise CommandError(f"--interval must be between 0 and 86400 seconds; got {interval:g}.")
        local = _reachable_address(host)
        if settings.SANDBOX_MODE and "SANDBOX_URL" not in os.environ:
            # The sandbox is served by this server, so it lives on whatever port the server was given.
            settings.SANDBOX_URL = settings.OPENAI_BASE_URL = f"http://{_url_host(local)}:{port}/sandbox/v1"
        stop = threading.Event()
        sync = threading.Thread(
            target=_keep_history, args=(stop, local, port, interval), name="batchboard-sync", daemon=True
        )
        sync.start()
        self.stdout.write(self.style.SUCCESS(f"batchboard is at http://{_url_host(local)}:{port}/"))
        self.stdout.write(f"History is being kept: the list is synced every {interval:g} s in the background.")
        # SIGTERM stops the server the way Ctrl-C does: runserver exits with status 0.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        addrport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            call_command("runserver", addrport, use_reloader=False, use_threading=True, use_ipv6=":" in host)
        finally:
            stop.set()


def _keep_history(stop: threading.Event, host: str, port: int, interval: float) -> None:
    try:
        if _wait_for_server(stop, host, port):
            upstream.sync_loop(stop, interval=interval, quiet=True)
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
