"""Live regions: how often a page polls (the viewer's choice, slowed down by the server while the API fails), and
the empty answer to a poll whose answer is already on screen."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.http import HttpResponse
from django.utils import timezone

INTERVALS = (2, 5, 10, 30)
DEFAULT_INTERVAL = 5
INTERVAL_COOKIE = "batchboard_live_interval"
PAUSED_COOKIE = "batchboard_live_paused"
# The polled region sends the key of the answer it shows; an equal key gets 204 (htmx then swaps nothing).
SHOWN_HEADER = "X-Batchboard-Shown"
# Relative times ("3 min ago") and durations on screen are never older than this: it is part of every key.
CLOCK_STEP_SECONDS = 10


@dataclass(frozen=True)
class Live:
    """What the page's live controls show and how often its regions poll."""

    interval: int  # seconds, chosen by the viewer (a cookie, so the server can render the trigger)
    paused: bool  # the viewer turned Live off (checked again in the browser before each poll)
    retry_seconds: int = 0  # while the upstream API fails: poll no faster than it is retried

    @property
    def every(self) -> int:
        return max(self.interval, self.retry_seconds)

    @property
    def intervals(self) -> tuple[int, ...]:
        return INTERVALS


def live_of(request, freshness=None) -> Live:
    """The viewer's Live settings, with the server's backoff while the API behind `freshness` is failing."""
    try:
        interval = int(request.COOKIES.get(INTERVAL_COOKIE, DEFAULT_INTERVAL))
    except ValueError:
        interval = DEFAULT_INTERVAL
    if interval not in INTERVALS:
        interval = DEFAULT_INTERVAL
    retry = round(freshness.retry_seconds) if freshness is not None and not freshness.ok else 0
    return Live(interval=interval, paused=request.COOKIES.get(PAUSED_COOKIE) == "1", retry_seconds=retry)


def rendering_key(*parts) -> str:
    """The key of a rendering: everything its markup depends on but the clock, plus the viewer's time zone."""
    return hashlib.sha256(repr((*parts, timezone.get_current_timezone_name())).encode()).hexdigest()[:32]


def answer_key(rendering: str) -> str:
    """What a region sends back (SHOWN_HEADER): its rendering's key and the clock in CLOCK_STEP_SECONDS steps, so
    relative times on screen are refreshed at least that often."""
    clock_step = int(time.time() // CLOCK_STEP_SECONDS)
    return hashlib.sha256(f"{rendering}:{clock_step}".encode()).hexdigest()[:32]


def is_shown(request, key: str) -> bool:
    return request.headers.get(SHOWN_HEADER) == key


def unchanged() -> HttpResponse:
    """The answer to a poll that would swap in what is already there: nothing, so focus, scroll and screen
    readers are left alone."""
    return HttpResponse(status=204)
