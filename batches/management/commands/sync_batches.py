"""Keep the history without anyone watching: refresh the cache from the Batch API once, or in a loop."""

import contextlib
import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from batches import upstream

logger = logging.getLogger("batches.sync")


class Command(BaseCommand):
    help = (
        "Refresh the local cache from the Batch API. A pass walks the list newest first until it reaches batches "
        "an earlier complete pass already recorded, then refreshes every batch that is not final; each distinct "
        "state is kept as a snapshot. Without --loop: one pass now, exit status 1 if the API failed. With --loop: a "
        "pass every --interval seconds until Ctrl-C or SIGTERM (exit status 0). Processes sharing the database (a "
        "second machine, the web server's viewers, `manage.py serve`) share one lease, so the list is walked at most "
        "once per interval. Logs one line per pass: pages, batches seen, changed, retrieved, duration, or the error."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep running, one pass every --interval seconds.")
        parser.add_argument(
            "--interval", type=float, default=10.0, help="Seconds between passes with --loop (default: 10)."
        )

    def handle(self, *args, loop, interval, **options):
        if not 0 < interval <= 86_400:
            raise CommandError(f"--interval must be between 0 and 86400 seconds; got {interval:g}.")
        stop = threading.Event()
        try:
            with _stop_on_signals(stop):
                if loop:
                    logger.info("Syncing every %g s; Ctrl-C or SIGTERM stops.", interval)
                    upstream.sync_loop(stop, interval=interval)
                else:
                    outcome = upstream.list_pass(force=True, stop=stop)
                    logger.info("%s", outcome.describe())
                    if outcome.error:
                        raise CommandError("The sync pass failed (see above).")
        except KeyboardInterrupt:
            pass  # A second Ctrl-C abandons the pass in the middle; what was recorded so far is kept.
        if loop or stop.is_set():
            logger.info("Stopped.")


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
