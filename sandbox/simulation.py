"""A batch's lifecycle as a pure function of its plan and the clock: no background thread, nothing but arithmetic.

A plan is fixed when the batch is created: the real creation time, the SANDBOX_SPEED in force then (simulated
seconds per real second), simulated durations for each phase, the validation outcome, and cumulative request
counts and token usage at evenly spaced checkpoints of the run. The only later input is the time a cancel was
requested. `state_at(plan, now)` derives status, timestamps, counts and usage from those, so a restart, another
process or a changed setting never makes a batch jump, and timestamps only ever move forward.

Choices where REFERENCE.md is silent (all assumptions):
* Timestamps are compressed by the speed: `in_progress_at` is `created_at + validate_s / speed`, so a batch at
  speed 60 shows a realistic shape in real time. `expires_at` is always `created_at + 86400` (as on OpenAI), so
  with a speed above 1 a batch can expire long before its `expires_at`.
* Expiry: requests still unrun when the 24 h window (simulated) closes are dropped; the batch turns `expired` a
  minute later without passing through `finalizing`. A batch already finalizing when the window closes completes.
* A cancel during `validating` goes straight to `cancelling` and ends `cancelled` with no requests run. After a
  cancel during the run nothing new starts: only the requests already in flight finish (IN_FLIGHT_S of work at the
  run's rate, a small part of what is left, done over the first IN_FLIGHT_DRAIN_SHARE of the drain), so counts grow
  a little, more slowly, while `cancelling` (as in the fixtures), then stop; the batch turns `cancelled` when the
  drain (a few simulated minutes) ends.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sandbox.rules import TERMINAL_STATUSES

WINDOW_S = 86_400
EXPIRE_LAG_S = 60.0
MAX_CHECKPOINTS = 200

# Simulated seconds: validating ~5 min, running ~45 min plus a little per line, finalizing ~10 min, draining ~4 min.
VALIDATE_S = 300.0
RUN_BASE_S = 2_700.0
RUN_PER_LINE_S = 0.5
FINALIZE_S = 600.0
DRAIN_S = 240.0
IN_FLIGHT_S = 30.0  # simulated seconds of the run's work already running when a cancel arrives
IN_FLIGHT_DRAIN_SHARE = 0.5  # they finish within this share of the drain; the rest of it changes nothing

TIMESTAMP_OF_STATUS = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}
TIMESTAMP_FIELDS = tuple(TIMESTAMP_OF_STATUS.values())  # in the Batch object's order
ZERO_POINT = (0, 0, 0, 0, 0, 0, 0)  # lines done, completed, failed, input, cached, output, reasoning tokens


@dataclass(frozen=True)
class Plan:
    created: float
    speed: float
    validate_s: float
    run_s: float
    finalize_s: float
    drain_s: float
    total: int
    model: str | None
    errors: tuple = ()
    checkpoints: tuple = (ZERO_POINT,)
    cancel_requested: float | None = None


@dataclass(frozen=True)
class State:
    status: str
    created_at: int
    expires_at: int
    timestamps: dict
    total: int
    completed: int
    failed: int
    lines_done: int
    usage: dict | None
    model: str | None
    errors: tuple | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def terminal_at(self) -> int | None:
        return self.timestamps.get(TIMESTAMP_OF_STATUS.get(self.status, ""))

    @property
    def unrun_code(self) -> str | None:
        """The error code of requests that never ran, written to the error file of a cancelled or expired batch."""
        return {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(self.status)


def durations(batch_id: str, total: int, scenario: str = "") -> dict:
    """Simulated phase durations, varied a little per batch (deterministically, so they are reproducible)."""
    jitter = random.Random(hashlib.sha256(batch_id.encode()).digest())
    run_s = (RUN_BASE_S + RUN_PER_LINE_S * total) * jitter.uniform(0.85, 1.15)
    if scenario == "slow":
        run_s *= 20
    elif scenario == "expire":
        run_s = WINDOW_S * 1.5
    return {
        "validate_s": VALIDATE_S * jitter.uniform(0.8, 1.2),
        "run_s": run_s,
        "finalize_s": FINALIZE_S * jitter.uniform(0.8, 1.2),
        "drain_s": DRAIN_S * jitter.uniform(0.75, 1.25),
    }


def checkpoints(per_line: list[tuple[bool, int, int, int, int]]) -> list[list[int]]:
    """Cumulative (lines, completed, failed, tokens...) after each line, thinned to at most MAX_CHECKPOINTS + 1.

    `per_line` holds (succeeded, input, cached, output, reasoning tokens) in processing order. Progress moves
    from one checkpoint to the next, so counts, usage and partial result files always agree exactly.
    """
    total = len(per_line)
    wanted = {round(total * step / MAX_CHECKPOINTS) for step in range(MAX_CHECKPOINTS + 1)}
    points = [list(ZERO_POINT)]
    running = list(ZERO_POINT)
    for index, (succeeded, input_tokens, cached, output_tokens, reasoning) in enumerate(per_line, start=1):
        running[0] = index
        if succeeded:
            running[1] += 1
            running[3] += input_tokens
            running[4] += cached
            running[5] += output_tokens
            running[6] += reasoning
        else:
            running[2] += 1
        if index in wanted:
            points.append(list(running))
    return points


def _cancel_at(plan: Plan) -> float | None:
    """When the cancel arrived, in simulated seconds after creation."""
    return None if plan.cancel_requested is None else max(plan.cancel_requested - plan.created, 0) * plan.speed


def timeline(plan: Plan) -> tuple[list[tuple[float, str]], float | None]:
    """The status transitions as (simulated seconds after creation, status), and when requests stop running."""
    transitions = [(0.0, "validating")]
    validated = plan.validate_s
    ran = validated + plan.run_s
    finalized = ran + plan.finalize_s
    cancel_at = _cancel_at(plan)

    if cancel_at is not None and cancel_at < validated:
        transitions += [(cancel_at, "cancelling"), (cancel_at + plan.drain_s, "cancelled")]
        return transitions, None
    if plan.errors:
        return [*transitions, (validated, "failed")], None

    transitions.append((validated, "in_progress"))
    finishes = ran <= WINDOW_S
    ends_at = finalized if finishes else WINDOW_S + EXPIRE_LAG_S
    if cancel_at is not None and cancel_at < ends_at:
        if finishes and cancel_at >= ran:
            transitions.append((ran, "finalizing"))
        cancelled_at = cancel_at + plan.drain_s
        transitions += [(cancel_at, "cancelling"), (cancelled_at, "cancelled")]
        return transitions, min(cancelled_at, WINDOW_S)
    if finishes:
        return [*transitions, (ran, "finalizing"), (finalized, "completed")], ran
    return [*transitions, (ends_at, "expired")], WINDOW_S


def final_moment(plan: Plan) -> float:
    """The real time at which the batch reaches its final status, unless a cancel changes its plan."""
    transitions, _ = timeline(plan)
    return plan.created + transitions[-1][0] / plan.speed


def final_status(plan: Plan) -> str:
    """The status the batch ends in unless a cancel changes its plan."""
    transitions, _ = timeline(plan)
    return transitions[-1][1]


def _run_fraction(plan: Plan, sim_seconds: float) -> float:
    """How much of the run is done: steady progress, which after a cancel slows to the in-flight remainder."""

    def steady(at: float) -> float:
        if at >= plan.validate_s + plan.run_s:
            return 1.0  # exactly, whatever the float rounding of the division
        return min(max((at - plan.validate_s) / plan.run_s, 0.0), 1.0)

    cancel_at = _cancel_at(plan)
    if cancel_at is None or sim_seconds <= cancel_at:
        return steady(sim_seconds)
    done = steady(cancel_at)
    settled = min((sim_seconds - cancel_at) / (plan.drain_s * IN_FLIGHT_DRAIN_SHARE), 1.0)
    return done + min(1.0 - done, IN_FLIGHT_S / plan.run_s) * settled


def _point_at(plan: Plan, sim_seconds: float) -> tuple:
    steps = len(plan.checkpoints) - 1
    if steps <= 0 or sim_seconds < plan.validate_s:
        return plan.checkpoints[0] if plan.checkpoints else ZERO_POINT
    fraction = _run_fraction(plan, sim_seconds)
    if fraction >= 1.0:
        return plan.checkpoints[-1]
    return plan.checkpoints[min(max(int(fraction * steps), 0), steps)]


def _usage(point) -> dict:
    _, _, _, input_tokens, cached, output_tokens, reasoning = point
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def real_time(plan: Plan, sim_seconds: float) -> int:
    """The Unix second at which a simulated moment happens."""
    return int(plan.created + sim_seconds / plan.speed)


def state_at(plan: Plan, now: float) -> State:
    """What the API reports about the batch at real time `now`."""
    elapsed = max(now - plan.created, 0.0) * plan.speed
    transitions, run_stop = timeline(plan)
    passed = [(at, status) for at, status in transitions if at <= elapsed]
    status = passed[-1][1]
    timestamps = dict.fromkeys(TIMESTAMP_FIELDS)
    for at, reached in passed[1:]:
        timestamps[TIMESTAMP_OF_STATUS[reached]] = real_time(plan, at)

    started = timestamps["in_progress_at"] is not None
    point = _point_at(plan, min(elapsed, run_stop)) if started and run_stop is not None else ZERO_POINT
    return State(
        status=status,
        created_at=int(plan.created),
        expires_at=int(plan.created) + WINDOW_S,
        timestamps=timestamps,
        total=plan.total if started else 0,
        completed=point[1],
        failed=point[2],
        lines_done=point[0],
        usage=_usage(point) if started or status in TERMINAL_STATUSES else None,
        model=plan.model if started else None,
        errors=plan.errors if status == "failed" else None,
    )
