"""Keep the history without anyone watching: refresh the cache from the Batch API once, or in a loop."""

import contextlib
import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from batches import sync
from batches.models import Connection

logger = logging.getLogger("batches.sync")


class Command(BaseCommand):
    help = (
        "Keep the local cache in step with the Batch API. A pass walks the list newest first until it is below both "
        "the last pass's newest batch and the oldest running one (100 batches per call), continues the background "
        "import of the history from its saved cursor, and retrieves the few running batches too deep to walk to; "
        "each distinct state is kept as a snapshot. Each connection has its own pass, lease and budget. Without "
        "--loop: one pass of each syncing connection now (or of --connection), exit status 1 if the API of any failed. "
        "With --loop: a pass every BATCHBOARD_REFRESH_INTERVAL seconds while someone watches the list, every "
        "BATCHBOARD_HISTORY_INTERVAL seconds otherwise, until Ctrl-C or SIGTERM (exit status 0). Loops sharing the "
        "database hold one lease, so two never walk in the same interval, and a killed loop's lease expires. Logs "
        "one line per pass: pages, batches seen, changed, retrieved, imported, duration, or the error."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep running, one pass every --interval seconds.")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between checks whether a pass is due, with --loop (default: BATCHBOARD_REFRESH_INTERVAL).",
        )
        parser.add_argument("--connection", default="", help="Without --loop: pass over this connection (its slug).")

    def handle(self, *args, loop, interval, connection, **options):
        if interval is not None and not 0 < interval <= 86_400:
            raise CommandError(f"--interval must be between 0 and 86400 seconds; got {interval:g}.")
        stop = threading.Event()
        try:
            with _stop_on_signals(stop):
                if loop:
                    logger.info("Syncing; Ctrl-C or SIGTERM stops.")
                    sync.sync_loop(stop, wake_every=interval)
                else:
                    failed = [slug for slug in _connections(connection) if not _one_pass(slug, stop)]
                    if failed:
                        raise CommandError(f"The sync pass of {', '.join(failed)} failed (see above).")
        except KeyboardInterrupt:
            pass  # A second Ctrl-C abandons the pass in the middle; what was recorded so far is kept.
        if loop or stop.is_set():
            logger.info("Stopped.")


def _connections(slug: str) -> list[str]:
    Connection.objects.default()
    syncing = Connection.objects.syncing()
    slugs = [connection.slug for connection in (syncing.filter(slug=slug) if slug else syncing)]
    if slug and not slugs:
        raise CommandError(f"There is no syncing connection {slug!r}.")
    return slugs


def _one_pass(slug: str, stop: threading.Event) -> bool:
    """One pass over the connection, logged; False if the API failed."""
    outcome = sync.run_pass(force=True, stop=stop, connection=Connection.objects.get(slug=slug))
    context = {"pass_number": 1, "connection": slug, **outcome.log_context()}
    logger.info("%s [%s]", outcome.describe(), slug, extra=context)
    return not outcome.error


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """The first Ctrl-C or SIGTERM ends the loop after the current upstream call; a second one at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Signal handlers can only be set in the main thread (e.g. not when called from a test's thread).
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("Stopping after the current request (%s)…", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
