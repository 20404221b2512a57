"""Live regions: how often a page polls (the viewer's choice, slowed down by the server while the API fails), the
empty answer (204) to a poll whose answer is already on screen, and 286 once nothing in a region can change.

Every polled region answers through this module: the list's table (which also caches its renderings), and through
`live_region` the detail panel and the results page."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django_htmx.http import HTMX_STOP_POLLING

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


def poll_status(polling: bool) -> int:
    """The status of a region's answer: 286 tells htmx to stop polling (the answer has no trigger left either)."""
    return 200 if polling else HTMX_STOP_POLLING


def is_poll(request) -> bool:
    """An htmx request for a region. A history-restore request (back button after htmx swapped the page) needs the
    whole page."""
    return bool(request.htmx) and not request.htmx.history_restore_request


@dataclass(frozen=True)
class LiveRegion:
    """One request's answer for a polled region: the server-chosen interval, whether the region still polls, and
    the key of the rendering (sent back by the region, so an unchanged one is answered with nothing)."""

    live: Live
    polling: bool
    answer_key: str
    is_poll: bool
    unchanged: bool  # a poll from a region that shows this very rendering: answer unchanged() instead

    def render(self, request, template: str, fragment: str, context: dict) -> HttpResponse:
        """The page, or for a poll its region (`template#fragment`): 200 while it polls, 286 once it stops."""
        context.update(live=self.live, polling=self.polling, answer_key=self.answer_key)
        if self.is_poll:
            return render(request, f"{template}#{fragment}", context, status=poll_status(self.polling))
        return render(request, template, context)


def live_region(request, freshness, *parts, polling: bool) -> LiveRegion:
    """The live region of a page whose markup depends on `parts` (everything it renders but the clock and the time
    zone: rendering_key adds those). `polling`: something in it can still change."""
    live = live_of(request, freshness)
    key = answer_key(rendering_key(*parts, polling, live.every))
    poll = is_poll(request)
    unchanged_poll = poll and is_shown(request, key)
    return LiveRegion(live=live, polling=polling, answer_key=key, is_poll=poll, unchanged=unchanged_poll)
