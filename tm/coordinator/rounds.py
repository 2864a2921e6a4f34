"""The loop shared by the coordinator's timers: run a round, sleep what it asks, wake early.

A round returns how long to sleep before the next one (0: go again at once); `Waker.wake`
cuts the sleep short; a database outage backs off (logged) instead of ending the loop.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import structlog
import trio

from tm.aio.pg import DatabaseUnavailable
from tm.core.backoff import exponential

log = structlog.get_logger("tm.coordinator")


class Waker:
    def __init__(self) -> None:
        self._event = trio.Event()

    def wake(self) -> None:
        self._event.set()

    async def sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or until woken; a wake during the round ends it at once."""
        if delay > 0:
            with trio.move_on_after(delay):
                await self._event.wait()
        self._event = trio.Event()


async def run_rounds(
    one_round: Callable[[], Awaitable[float]], waker: Waker, *, paused: str, action: str
) -> None:
    """Call `one_round` forever (see module doc); `paused`/`action` name the retry log line."""
    tries = 0
    while True:
        try:
            delay = await one_round()
            tries = 0
        except DatabaseUnavailable as exc:
            tries += 1
            delay = exponential(tries, base=0.2, cap=5.0, jitter=random.random())
            log.warning(paused, action=action, error=str(exc), retry_in=round(delay, 2))
        await waker.sleep(delay)
