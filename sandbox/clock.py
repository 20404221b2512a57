"""The sandbox's clock: the real time, which tests move forward with `advance` instead of sleeping.

Every request reads the time here once and hands it down (store and simulation are pure functions of that `now`),
so a batch's whole life can be played through in a test without waiting. Nothing outside the tests advances it,
and the offset lives in this process only: a test that advances it talks to an in-process live server.
"""

import time

_offset = 0.0


def now() -> float:
    return time.time() + _offset


def advance(seconds: float) -> None:
    global _offset
    _offset += seconds


def reset() -> None:
    global _offset
    _offset = 0.0
