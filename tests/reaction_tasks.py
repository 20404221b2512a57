"""Reaction steps the tests of batches.reactions run: each writes its effect as a line of a file (named by the
BATCHBOARD_TEST_EFFECTS environment variable), so a test can count how often an effect happened, also in a worker
process it started. Registered on import: a worker process imports this module when it loads one of its tasks."""

import os
import time
from pathlib import Path

from django.tasks import task

from batches import reactions

GATE_WAIT_SECONDS = 120


def _effects() -> Path:
    return Path(os.environ["BATCHBOARD_TEST_EFFECTS"])


def _write_effect(reaction) -> None:
    with _effects().open("a") as effects:
        effects.write(f"{reaction.step} {reaction.pk}\n")


def _wait_for_gate(reaction) -> None:
    """Say "started" (with this process's id), then wait until the test opens the gate; then the effect."""
    started = _effects().with_suffix(".started")
    started.write_text(str(os.getpid()))
    gate = _effects().with_suffix(".gate")
    deadline = time.monotonic() + GATE_WAIT_SECONDS
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _write_effect(reaction)


def _fail(reaction) -> None:
    raise ValueError(f"line 3 of the file of batch {reaction.batch.batch_id} is not JSON")


def _wait(reaction) -> None:
    raise reactions.Later(60, "the history import has not finished")


@task()
def effect(reaction_id: int) -> None:
    reactions.run(reaction_id, _write_effect)


@task()
def gated(reaction_id: int) -> None:
    reactions.run(reaction_id, _wait_for_gate)


@task()
def failing(reaction_id: int) -> None:
    reactions.run(reaction_id, _fail)


@task()
def waiting(reaction_id: int) -> None:
    reactions.run(reaction_id, _wait)


reactions.register("test_effect", effect)
reactions.register("test_gated", gated)
reactions.register("test_failing", failing)
reactions.register("test_waiting", waiting)
