"""What the snapshots tell about a batch over time: timeline, progress series, ETA and warnings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.utils import formats, timezone

from batches import services

# How long a batch may sit in a state before the page says it looks stuck. The API says cancelling takes up to
# about 10 minutes; validating and finalizing have no documented bound, so these are generous.
VALIDATING_STUCK_AFTER = timedelta(minutes=30)
FINALIZING_STUCK_AFTER = timedelta(minutes=30)
CANCELLING_STUCK_AFTER = timedelta(minutes=15)
STUCK_AFTER = {
    "validating": VALIDATING_STUCK_AFTER,
    "finalizing": FINALIZING_STUCK_AFTER,
    "cancelling": CANCELLING_STUCK_AFTER,
}
# The ETA uses the progress made over about this much recent time, so a batch that speeds up or slows down
# gets an estimate from its current pace rather than its average.
RATE_WINDOW = timedelta(minutes=30)
MAX_CHART_POINTS = 200
# Small enough point counts get a dot per observation; beyond that the dots hide the line.
MAX_POINT_MARKERS = 40

# The API timestamp that records when a batch entered each status.
STATUS_ENTERED_FIELD = {
    "validating": "created_at",
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "cancelling": "cancelling_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelled": "cancelled_at",
}
# Lifecycle order, to order states entered within the same second.
STATUS_RANK = {
    status: rank
    for rank, status in enumerate(
        ("validating", "in_progress", "finalizing", "cancelling", "completed", "failed", "expired", "cancelled")
    )
}

# Chart geometry, in SVG user units (the SVG scales to the width of its container).
CHART_WIDTH = 640
CHART_HEIGHT = 220
CHART_LEFT = 58
CHART_RIGHT = 24
CHART_TOP = 14
CHART_BOTTOM = 28
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
class Observation:
    """One snapshot as the history needs it (never the payload)."""

    at: datetime
    status: str
    total: int
    completed: int
    failed: int
    source: str = "observed"  # "observed" or "api" (a point implied by an API timestamp)

    @property
    def processed(self) -> int:
        return self.completed + self.failed

    @property
    def label(self) -> str:
        return self.status.replace("_", " ")


@dataclass(frozen=True)
class Phase:
    """A stretch of time the batch spent in one status."""

    status: str
    entered_at: datetime
    source: str  # "api" when the API reported the time, "observed" when the dashboard first saw the status
    left_at: datetime | None
    duration: timedelta | None  # None for a terminal status, which has no end
    is_current: bool

    @property
    def label(self) -> str:
        return self.status.replace("_", " ")

    @property
    def duration_label(self) -> str:
        return format_duration(self.duration) if self.duration is not None else ""

    @property
    def is_terminal(self) -> bool:
        return services.is_terminal(self.status)


@dataclass(frozen=True)
class Estimate:
    """When processing should finish at the current pace, and whether that is before the batch expires."""

    finishes_at: datetime
    finishes_clock: str
    finishes_in: str  # "" when the estimate is already due
    rate_per_hour: float
    remaining: int
    basis: str  # "observed" (recent snapshots) or "api" (average since in_progress_at)
    expires_first: bool
    unprocessed_at_expiry: int

    @property
    def rate_label(self) -> str:
        if self.rate_per_hour >= 60:
            return f"{self.rate_per_hour / 60:,.0f} requests/min"
        return f"{self.rate_per_hour:,.1f} requests/h"


@dataclass(frozen=True)
class Notice:
    kind: str  # "stuck", "expires_first", "overdue"
    message: str


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
class Chart:
    """The progress chart, as SVG geometry and a text alternative; the template only places it."""

    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    completed_area: str
    completed_line: str
    failed_area: str
    failed_line: str
    total_y: float | None
    total: int
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    markers: tuple[Marker, ...]
    dots: tuple[tuple[float, float, float], ...]  # (x, y completed, y failed) per observation, when few
    points: tuple[Observation, ...]  # what is plotted, for the data table
    observation_count: int
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
    def is_downsampled(self) -> bool:
        return len([p for p in self.points if p.source == "observed"]) < self.observation_count


@dataclass(frozen=True)
class BatchHistory:
    now: datetime
    status: str
    is_terminal: bool
    phases: tuple[Phase, ...]
    chart: Chart | None
    estimate: Estimate | None
    progress_note: str  # why there is no estimate, for active batches without one
    warnings: tuple[Notice, ...]
    observation_count: int


def batch_history(batch, now: datetime | None = None) -> BatchHistory:
    """The history panel of one models.Batch, from one query over its snapshots (never their payloads)."""
    rows = batch.snapshots.order_by("observed_at", "id").values_list(
        "observed_at", "status", "total_requests", "completed_requests", "failed_requests"
    )
    observations = [Observation(*row) for row in rows]
    return summarize(batch.api, observations, as_of=batch.last_seen_at, now=now or timezone.now())


def summarize(api: services.Batch, observations: list[Observation], *, as_of: datetime, now: datetime) -> BatchHistory:
    """Everything the panel shows, from the latest API state and the observations in time order.

    `as_of` is when the latest state was last confirmed: the batch was still in it then, even if no new snapshot
    was written because nothing changed.
    """
    if observations:
        as_of = max(as_of, observations[-1].at)
    as_of = min(as_of, now)
    phases = timeline(api, observations, now=now)
    estimate, note = eta(api, observations, as_of=as_of, now=now)
    return BatchHistory(
        now=now,
        status=api.status,
        is_terminal=api.is_terminal,
        phases=phases,
        chart=chart(api, observations, phases, as_of=as_of),
        estimate=estimate,
        progress_note=note,
        warnings=warnings(api, phases, estimate, now=now),
        observation_count=len(observations),
    )


# --- Timeline ---------------------------------------------------------------


def api_entered_at(api: services.Batch, status: str) -> datetime | None:
    field_name = STATUS_ENTERED_FIELD.get(status)
    return services.from_unix(getattr(api, field_name)) if field_name else None


def timeline(api: services.Batch, observations: list[Observation], *, now: datetime) -> tuple[Phase, ...]:
    """The statuses the batch went through, each with the most exact entry time known.

    The API's `*_at` fields are exact; the dashboard's first observation of a status is only an upper bound,
    so it is used for statuses the API gives no time for.
    """
    entered: dict[str, tuple[datetime, str]] = {}
    for observation in observations:
        entered.setdefault(observation.status, (observation.at, "observed"))
    for status in STATUS_ENTERED_FIELD:
        exact = api_entered_at(api, status)
        if exact is not None:
            entered[status] = (exact, "api")
    if api.status and api.status not in entered:
        entered[api.status] = (observations[-1].at if observations else now, "observed")

    # The current status always comes last, even if an observation of an earlier one was stamped later.
    ordered = sorted(
        entered.items(),
        key=lambda item: (item[0] == api.status, item[1][0], STATUS_RANK.get(item[0], len(STATUS_RANK))),
    )
    phases = []
    for index, (status, (entered_at, source)) in enumerate(ordered):
        is_last = index == len(ordered) - 1
        left_at = None if is_last else ordered[index + 1][1][0]
        if not is_last:
            duration = left_at - entered_at
        elif services.is_terminal(status):
            duration = None
        else:
            duration = now - entered_at
        if duration is not None:
            duration = max(duration, timedelta(0))
        phases.append(
            Phase(
                status=status,
                entered_at=entered_at,
                source=source,
                left_at=left_at,
                duration=duration,
                is_current=is_last and not services.is_terminal(status),
            )
        )
    return tuple(phases)


# --- ETA and warnings -------------------------------------------------------


def eta(
    api: services.Batch, observations: list[Observation], *, as_of: datetime, now: datetime
) -> tuple[Estimate | None, str]:
    """(estimate, "") when the pace is known, otherwise (None, why not); (None, "") for finished batches."""
    if api.is_terminal:
        return None, ""
    counts = api.request_counts
    if api.status == "validating":
        return None, "No progress yet: the input file is still being validated."
    if api.status == "finalizing":
        return None, "Every request has been processed; the result files are being written."
    if api.status == "cancelling":
        return None, "Cancelling: requests already running are finishing, nothing new starts."
    if not counts.total:
        return None, "No progress yet: the API has not reported how many requests there are."
    if not counts.processed:
        return None, "No progress yet: no request has been processed, so there is no estimate."
    remaining = max(counts.total - counts.processed, 0)
    if not remaining:
        return None, "Every request has been processed; finalizing should start shortly."

    rate, basis = _rate(api, observations, as_of=as_of)
    if basis == "stalled":
        return None, f"No requests were processed in the last {format_duration(RATE_WINDOW)}, so there is no estimate."
    if not rate:
        return None, "No progress measured yet, so there is no estimate."
    finishes_at = as_of + timedelta(hours=remaining / rate)
    expires_at = services.from_unix(api.expires_at)
    expires_first = bool(expires_at and finishes_at > expires_at)
    unprocessed = 0
    if expires_first:
        hours_left = max((expires_at - as_of).total_seconds(), 0) / 3600
        unprocessed = max(math.ceil(remaining - rate * hours_left), 1)
    return (
        Estimate(
            finishes_at=finishes_at,
            finishes_clock=clock(finishes_at, now),
            finishes_in=format_duration(finishes_at - now) if finishes_at > now else "",
            rate_per_hour=rate,
            remaining=remaining,
            basis=basis,
            expires_first=expires_first,
            unprocessed_at_expiry=unprocessed,
        ),
        "",
    )


def _rate(api: services.Batch, observations: list[Observation], *, as_of: datetime) -> tuple[float, str]:
    """(requests per hour, basis): over the last RATE_WINDOW of snapshots, else the average since in_progress_at.

    The latest state held until `as_of`, so a pause since the last snapshot slows the rate down, and a batch that
    made no progress over a whole window is "stalled" rather than given its old average.
    """
    processed = api.request_counts.processed
    running = [o for o in observations if o.status == "in_progress"]
    before_window = [o for o in running if o.at <= as_of - RATE_WINDOW]
    start = before_window[-1] if before_window else (running[0] if running else None)
    if start is not None:
        hours = (as_of - start.at).total_seconds() / 3600
        if hours > 0 and processed > start.processed:
            return (processed - start.processed) / hours, "observed"
        if before_window:
            return 0.0, "stalled"
    started = services.from_unix(api.in_progress_at)
    if started and as_of > started:
        return processed / ((as_of - started).total_seconds() / 3600), "api"
    return 0.0, ""


def warnings(
    api: services.Batch, phases: tuple[Phase, ...], estimate: Estimate | None, *, now: datetime
) -> tuple[Notice, ...]:
    """What an operator should look at: a state held too long, an expiry the batch will not beat."""
    if api.is_terminal:
        return ()
    notices = []
    current = phases[-1] if phases else None
    limit = STUCK_AFTER.get(api.status)
    if current and limit and current.status == api.status and current.duration > limit:
        notices.append(
            Notice(
                "stuck",
                f"This batch has been {current.label} for {format_duration(current.duration)}, "
                f"longer than the usual {format_duration(limit)}.",
            )
        )
    expires_at = services.from_unix(api.expires_at)
    if expires_at and expires_at <= now:
        notices.append(
            Notice(
                "overdue",
                f"Its 24-hour window ended at {clock(expires_at, now)}; the API should mark it expired soon.",
            )
        )
    elif estimate and estimate.expires_first:
        notices.append(
            Notice(
                "expires_first",
                f"At this rate it will not finish before it expires at {clock(expires_at, now)} "
                f"(in {format_duration(expires_at - now)}): about {estimate.unprocessed_at_expiry:,} "
                "requests would be left unprocessed.",
            )
        )
    return tuple(notices)


# --- Chart ------------------------------------------------------------------


def downsample(points: list[Observation], max_points: int = MAX_CHART_POINTS) -> list[Observation]:
    """At most `max_points` points spread evenly over time: the last point of each time bucket, plus the first.

    The counts only grow, so the last point in a bucket carries everything that happened in it.
    """
    if len(points) <= max_points:
        return list(points)
    first, last = points[0], points[-1]
    span = (last.at - first.at).total_seconds()
    buckets = max_points - 2
    kept: dict[int, Observation] = {}
    for point in points[1:-1]:
        bucket = min(int((point.at - first.at).total_seconds() / span * buckets), buckets - 1) if span else 0
        kept[bucket] = point
    return [first, *kept.values(), last]


def chart(
    api: services.Batch, observations: list[Observation], phases: tuple[Phase, ...], *, as_of: datetime
) -> Chart | None:
    """The progress chart; None when there is nothing to plot yet (no requests counted, or a single moment)."""
    points = _chart_points(api, observations)
    total = max([api.request_counts.total, *(p.total for p in points)], default=0)
    highest = max([total, *(p.processed for p in points)], default=0)
    if not points or not highest:
        return None
    start = points[0].at
    end = max(points[-1].at, as_of) if not api.is_terminal else points[-1].at
    if end <= start:
        return None
    plotted = downsample(points)

    right = CHART_WIDTH - CHART_RIGHT
    bottom = CHART_HEIGHT - CHART_BOTTOM
    step = _count_step(highest)
    y_max = math.ceil(highest / step) * step  # the total line may sit on the top gridline; its label fits above
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return round(CHART_LEFT + (at - start).total_seconds() / span * (right - CHART_LEFT), 1)

    def y(count: int) -> float:
        return round(bottom - count / y_max * (bottom - CHART_TOP), 1)

    def line(values: list[int]) -> str:
        coordinates = [f"{x(p.at)},{y(v)}" for p, v in zip(plotted, values, strict=True)]
        if x(end) > x(plotted[-1].at):
            coordinates.append(f"{x(end)},{y(values[-1])}")  # still in this state when last checked
        return "M" + " L".join(coordinates)

    def area(values: list[int]) -> str:
        last_x = max(x(end), x(plotted[-1].at))
        return f"{line(values)} L{last_x},{bottom} L{x(plotted[0].at)},{bottom} Z"

    completed = [p.completed for p in plotted]
    failed = [p.failed for p in plotted]
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
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        left=CHART_LEFT,
        right=right,
        top=CHART_TOP,
        bottom=bottom,
        completed_area=area(completed),
        completed_line=line(completed),
        failed_area=area(failed),
        failed_line=line(failed),
        total_y=y(total) if total else None,
        total=total,
        x_ticks=_time_ticks(start, end, x, right),
        y_ticks=tuple(Tick(y(value), f"{value:,}") for value in range(0, y_max + 1, step)),
        markers=markers,
        dots=dots,
        points=tuple(plotted),
        observation_count=len(observations),
        summary=summary,
    )


def _chart_points(api: services.Batch, observations: list[Observation]) -> list[Observation]:
    """The observations plus what the API timestamps imply: nothing was processed before in_progress_at."""
    implied = []
    created_at = api_entered_at(api, "validating")
    if created_at and (not observations or created_at < observations[0].at):
        implied.append(Observation(created_at, "validating", 0, 0, 0, source="api"))
    started_at = api_entered_at(api, "in_progress")
    first_running = next((o.at for o in observations if o.status != "validating"), None)
    if started_at and (first_running is None or started_at < first_running):
        implied.append(Observation(started_at, "in_progress", api.request_counts.total, 0, 0, source="api"))
    return sorted([*implied, *observations], key=lambda p: p.at)


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
        anchor = "end" if right - position < 36 else "start" if position - CHART_LEFT < 24 else "middle"
        ticks.append(Tick(position, label, anchor))
        at += step
    return tuple(ticks)


# --- Words ------------------------------------------------------------------


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


def clock(value: datetime, now: datetime) -> str:
    """ "14:05" for a time on the same local day as `now`, "Mar 27 14:05" otherwise."""
    local = timezone.localtime(value)
    if local.date() == timezone.localtime(now).date():
        return formats.date_format(local, "H:i")
    return formats.date_format(local, "M j H:i")
