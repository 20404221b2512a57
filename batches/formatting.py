"""How times, durations and sizes are written on every page: 24-hour clock, one duration style, one size style."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import formats, timezone


def format_duration(value: timedelta) -> str:
    """A short, rounded duration: "45 s", "12 min", "2 h 5 min", "3 d 4 h"."""
    seconds = max(int(value.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(value: datetime, now: datetime) -> str:
    """ "3 min ago" or "in 2 h 5 min", in the duration style; "just now" within a second."""
    delta = value - now
    if abs(delta) < timedelta(seconds=1):
        return "just now"
    if delta > timedelta(0):
        return f"in {format_duration(delta)}"
    return f"{format_duration(-delta)} ago"


def clock(value: datetime, now: datetime) -> str:
    """ "14:05" for a time on the same local day as `now`, "Mar 27 14:05" otherwise (24-hour, current time zone)."""
    local = timezone.localtime(value)
    if local.date() == timezone.localtime(now).date():
        return formats.date_format(local, "H:i")
    return formats.date_format(local, "M j H:i")


def exact(value: datetime) -> str:
    """ "2026-03-27 14:05:09 UTC": the full time, in the current time zone, for tooltips and tables."""
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def format_size(size: int) -> str:
    """Bytes as people read them, one way everywhere: "812 bytes", "35.9 KB", "200 MB" (units of 1,024, as the API's
    limits are stated)."""
    value = float(max(int(size), 0))
    unit = "bytes"
    for larger in ("KB", "MB", "GB", "TB"):
        if value < 1024:
            break
        value /= 1024
        unit = larger
    if unit == "bytes":
        return "1 byte" if value == 1 else f"{value:,.0f} bytes"
    return f"{value:,.1f}".removesuffix(".0") + f" {unit}"
