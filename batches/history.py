"""What the snapshots tell about a batch over time: timeline, ETA and warnings (the chart is batches/chart.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from batches import chart as progress_chart
from batches import services
from batches.formatting import clock, format_duration

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


# One snapshot as the history needs it (never the payload): the chart's point, observed by batchboard.
Observation = progress_chart.Point


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
        return services.status_label(self.status)

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
class BatchHistory:
    now: datetime
    status: str
    is_terminal: bool
    phases: tuple[Phase, ...]
    chart: progress_chart.Chart | None
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


def summarize(
    api: services.ApiBatch, observations: list[Observation], *, as_of: datetime, now: datetime
) -> BatchHistory:
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
        chart=progress_chart.progress_chart(api, observations, phases, as_of=as_of),
        estimate=estimate,
        progress_note=note,
        warnings=warnings(api, phases, estimate, now=now),
        observation_count=len(observations),
    )


# --- Timeline ---------------------------------------------------------------


def api_entered_at(api: services.ApiBatch, status: str) -> datetime | None:
    field_name = STATUS_ENTERED_FIELD.get(status)
    return services.from_unix(getattr(api, field_name)) if field_name else None


def timeline(api: services.ApiBatch, observations: list[Observation], *, now: datetime) -> tuple[Phase, ...]:
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
    rank = services.STATUS_RANK
    ordered = sorted(
        entered.items(), key=lambda item: (item[0] == api.status, item[1][0], rank.get(item[0], len(rank)))
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
    api: services.ApiBatch, observations: list[Observation], *, as_of: datetime, now: datetime
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


def _rate(api: services.ApiBatch, observations: list[Observation], *, as_of: datetime) -> tuple[float, str]:
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
    api: services.ApiBatch, phases: tuple[Phase, ...], estimate: Estimate | None, *, now: datetime
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
