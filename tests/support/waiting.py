"""Waiting in tests: for a condition, never for a fixed time.

CI shares two cores with everything else, so any moment a test waits for (a service ready, a
row written, a metric counted, a message delivered) may come late. A test waits until the
condition holds, with a budget generous enough that only a condition that never comes runs
it out; a condition that holds at once costs nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

# The budget of a wait: far above how long anything takes on a loaded machine, far below the
# suite's per-test timeout (pyproject.toml), so a test that fails says what it waited for.
WAIT_S = 30.0
# How often a condition is checked again.
POLL_S = 0.02


async def until(
    check: Callable[[], Any | Awaitable[Any]],
    what: str = "",
    *,
    timeout: float = WAIT_S,
    interval: float = POLL_S,
) -> Any:
    """Check ``check`` (a function, or a coroutine function) until it returns something
    truthy, and return that; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            name = what or getattr(check, "__name__", "condition")
            msg = f"not within {timeout:g} s: {name}"
            raise AssertionError(msg)
        await asyncio.sleep(interval)


def bounded(coro: Awaitable[Any], seconds: float = WAIT_S) -> Awaitable[Any]:
    """An await that cannot hang the suite: it fails after ``seconds``."""
    return asyncio.wait_for(coro, seconds)


class Clock:
    """Unix seconds that the test moves, for a service that takes a clock: a cooldown or a key
    set's age passes without waiting at all."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
