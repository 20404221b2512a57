"""The detail page's progress chart: what is known about a batch's request counts over time, drawn as SVG geometry.

Only two things are known: the API's timestamps (when the batch entered each status) and the counts at the moments
batchboard observed them. The chart draws those, joins two known points with a solid line only where the counts
between them are known too (two observations in a row, or equal counts at both ends: counts never go down), and
draws every other stretch as a dashed "not observed" segment — never a slope that looks measured.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.utils import formats, timezone

from batches import services
from batches.formatting import clock

if TYPE_CHECKING:
    from batches.history import Phase

MAX_CHART_POINTS = 200
# Small enough point counts get a dot per observation; beyond that the dots hide the line.
MAX_POINT_MARKERS = 40

# Geometry, in SVG user units (the SVG scales to the width of its container).
WIDTH = 640
HEIGHT = 220
LEFT = 58
RIGHT = 24
TOP = 14
BOTTOM = 28
_TICK_STEPS = tuple(
    timedelta(seconds=s)
    for s in (
        *(1, 2, 5, 10, 15, 30),
        *(60, 120, 300, 600, 900, 1800),
        *(3600, 7200, 10800, 21600, 43200),
        *(86400, 2 * 86400, 7 * 86400),
    )
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Point:
    """Request counts known at one moment: observed by batchboard (a snapshot: history.Observation is this class), or
    implied by an API timestamp."""

    at: datetime
    status: str
    total: int
    completed: int
    failed: int
    source: str = "observed"  # or "api"

    @property
    def processed(self) -> int:
        return self.completed + self.failed

    @property
    def label(self) -> str:
        return services.status_label(self.status)

    def same_counts(self, other: Point) -> bool:
        return (self.completed, self.failed) == (other.completed, other.failed)


@dataclass(frozen=True)
class Tick:
    position: float
    label: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Marker:
    x: float
    label: str


@dataclass(frozen=True)
class Series:
    """One count (completed or failed) as SVG paths: the known stretches, the unobserved ones, the area under the
    known ones."""

    line: str
    gaps: str
    area: str


@dataclass(frozen=True)
class Chart:
    """The progress chart, as SVG geometry and a text alternative; the template only places it."""

    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    completed: Series
    failed: Series
    total_y: float | None
    total: int
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    markers: tuple[Marker, ...]
    dots: tuple[tuple[float, float, float], ...]  # (x, y completed, y failed) per observation, when few
    points: tuple[Point, ...]  # what is plotted, for the data table
    known_count: int  # the points known before thinning out: observations and the API's own timestamps
    end: datetime  # where the x-axis ends: the final timestamp of a finished batch, else when it was last checked
    summary: str

    @property
    def y_label_x(self) -> int:
        return self.left - 6

    @property
    def x_label_y(self) -> int:
        return self.height - 8

    @property
    def tick_end(self) -> float:
        return self.bottom + 4

    @property
    def has_gaps(self) -> bool:
        return bool(self.completed.gaps or self.failed.gaps)

    @property
    def is_downsampled(self) -> bool:
        return len(self.points) < self.known_count


def known_points(
    api: services.ApiBatch, observations: list[Point], phases: tuple[Phase, ...]
) -> tuple[list[Point], datetime | None]:
    """(every point whose counts are known, in time order; the final timestamp of a finished batch, else None).

    The API's timestamps add what they prove: nothing is processed before `in_progress_at`, and the counts of a
    finished batch hold from `finalizing_at` (processing is over) and at its final timestamp. Observations made
    after the final timestamp only repeat the final counts, which the final point already carries.
    """
    counts = api.request_counts
    final_at = phases[-1].entered_at if api.is_terminal and phases and phases[-1].is_terminal else None
    points = [o for o in observations if final_at is None or o.at < final_at]
    created_at = services.from_unix(api.created_at)
    if created_at:
        points.append(Point(created_at, "validating", 0, 0, 0, "api"))
    started_at = services.from_unix(api.in_progress_at)
    if started_at:
        points.append(Point(started_at, "in_progress", counts.total, 0, 0, "api"))
    finalizing_at = services.from_unix(api.finalizing_at)
    if finalizing_at and api.status in ("finalizing", "completed"):
        points.append(Point(finalizing_at, "finalizing", counts.total, counts.completed, counts.failed, "api"))
    if final_at:
        points.append(Point(final_at, api.status, counts.total, counts.completed, counts.failed, "api"))
    rank = services.STATUS_RANK
    points.sort(key=lambda p: (p.at, rank.get(p.status, len(rank)), p.source != "observed"))
    return _without_repeats(points), final_at


def _without_repeats(points: list[Point]) -> list[Point]:
    """Drop a point at the same moment as the one before it with the same counts (an API timestamp that an
    observation already shows: the observation is kept, as it joins the observations around it)."""
    kept: list[Point] = []
    for point in points:
        if kept and kept[-1].at == point.at and kept[-1].same_counts(point):
            continue
        kept.append(point)
    return kept


def is_known_between(a: Point, b: Point) -> bool:
    """Whether the counts between two points are known: watched throughout, or equal at both ends (counts only
    grow, so they cannot have moved in between)."""
    return (a.source == b.source == "observed") or a.same_counts(b)


def downsample(points: list[Point], max_points: int = MAX_CHART_POINTS) -> list[Point]:
    """At most `max_points` points spread evenly over time: the last point of each time bucket, plus the first.

    The counts only grow, so the last point in a bucket carries everything that happened in it. Points implied by
    API timestamps are always kept: they mark where the unobserved stretches start and end.
    """
    if len(points) <= max_points:
        return list(points)
    first, last = points[0], points[-1]
    span = (last.at - first.at).total_seconds()
    buckets = max_points - 2
    kept: dict[tuple, Point] = {}
    for point in points[1:-1]:
        bucket = min(int((point.at - first.at).total_seconds() / span * buckets), buckets - 1) if span else 0
        kept[(bucket, point.at) if point.source == "api" else (bucket,)] = point
    return sorted([first, *kept.values(), last], key=lambda p: p.at)


def progress_chart(
    api: services.ApiBatch, observations: list[Point], phases: tuple[Phase, ...], *, as_of: datetime
) -> Chart | None:
    """The progress chart; None when there is nothing to plot yet (no requests counted, or a single moment)."""
    points, final_at = known_points(api, observations, phases)
    total = max([api.request_counts.total, *(p.total for p in points)], default=0)
    highest = max([total, *(p.processed for p in points)], default=0)
    if not points or not highest:
        return None
    start = points[0].at
    # A finished batch's axis ends at its final timestamp; a running one's when it was last confirmed unchanged.
    end = final_at or max(points[-1].at, as_of)
    if end <= start:
        if final_at is None:
            return None
        end = start + timedelta(seconds=1)  # a whole life within one second of the API's clock: still drawn
    plotted = downsample(points)

    right = WIDTH - RIGHT
    bottom = HEIGHT - BOTTOM
    step = _count_step(highest)
    y_max = math.ceil(highest / step) * step  # the total line may sit on the top gridline; its label fits above
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return round(LEFT + (at - start).total_seconds() / span * (right - LEFT), 1)

    def y(count: int) -> float:
        return round(bottom - count / y_max * (bottom - TOP), 1)

    # Still in the last observed state when last checked: the counts held until `end`.
    held = [*plotted]
    if final_at is None and x(end) > x(plotted[-1].at):
        last = plotted[-1]
        held.append(Point(end, last.status, last.total, last.completed, last.failed, last.source))

    def series(value) -> Series:
        line, gaps, area = [], [], []
        for a, b in itertools.pairwise(held):
            a_xy, b_xy = f"{x(a.at)},{y(value(a))}", f"{x(b.at)},{y(value(b))}"
            if is_known_between(a, b):
                line.append((a_xy, b_xy))
                area.append(f"M{a_xy} L{b_xy} L{x(b.at)},{bottom} L{x(a.at)},{bottom} Z")
            else:
                gaps.append((a_xy, b_xy))
        return Series(line=_joined(line), gaps=_joined(gaps), area=" ".join(area))

    markers = tuple(
        Marker(x(phase.entered_at), f"{phase.label} from {clock(phase.entered_at, end)}")
        for phase in phases
        if start < phase.entered_at <= end
    )
    dots = ()
    if len(plotted) <= MAX_POINT_MARKERS:
        dots = tuple((x(p.at), y(p.completed), y(p.failed)) for p in plotted if p.source == "observed")
    last = points[-1]
    summary = (
        f"From {clock(start, end)} to {clock(end, end)}: {last.completed:,} of {total:,} requests completed "
        f"and {last.failed:,} failed."
    )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=right,
        top=TOP,
        bottom=bottom,
        completed=series(lambda p: p.completed),
        failed=series(lambda p: p.failed),
        total_y=y(total) if total else None,
        total=total,
        x_ticks=_time_ticks(start, end, x, right),
        y_ticks=tuple(Tick(y(value), f"{value:,}") for value in range(0, y_max + 1, step)),
        markers=markers,
        dots=dots,
        points=tuple(plotted),
        known_count=len(points),
        end=end,
        summary=summary,
    )


def _joined(segments: list[tuple[str, str]]) -> str:
    """Segments as one SVG path, continuing a subpath where a segment starts at the end of the one before."""
    parts: list[str] = []
    previous_end = None
    for start, end in segments:
        parts.append(f"L{end}" if start == previous_end else f"M{start} L{end}")
        previous_end = end
    return " ".join(parts)


def _count_step(highest: int) -> int:
    """The smallest round step (1, 2 or 5 times a power of ten) that reaches just above `highest` in 5 steps."""
    target = highest * 1.05
    magnitude = 1
    while True:
        for multiple in (1, 2, 5):
            if multiple * magnitude * 5 >= target:
                return multiple * magnitude
        magnitude *= 10


def _time_ticks(start: datetime, end: datetime, x, right: float) -> tuple[Tick, ...]:
    span = end - start
    step = next((s for s in _TICK_STEPS if span / s <= 5), _TICK_STEPS[-1])
    seconds = step.total_seconds()
    first = _EPOCH + timedelta(seconds=math.ceil((start - _EPOCH).total_seconds() / seconds) * seconds)
    with_date = timezone.localtime(start).date() != timezone.localtime(end).date()
    ticks = []
    previous_date = None
    at = first
    while at <= end:
        local = timezone.localtime(at)
        if step < timedelta(minutes=1):
            label = formats.date_format(local, "H:i:s")
        elif with_date and local.date() != previous_date:
            label = formats.date_format(local, "M j H:i")
        else:
            label = formats.date_format(local, "H:i")
        previous_date = local.date()
        position = x(at)
        anchor = "end" if right - position < 36 else "start" if position - LEFT < 24 else "middle"
        ticks.append(Tick(position, label, anchor))
        at += step
    return tuple(ticks)
