"""The loop shared by the coordinator's timers: run a round, sleep what it asks, wake early.

A round returns how long to sleep before the next one (0: go again at once); `Waker.wake`
cuts the sleep short; a database outage backs off (logged, tm.retry) instead of ending the
loop, and a wake cuts that wait short too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio
from structlog.typing import FilteringBoundLogger

from tm.aio.pg import DatabaseUnavailable
from tm.retry import Backoff, retry_forever


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
    one_round: Callable[[], Awaitable[float]],
    waker: Waker,
    *,
    log: FilteringBoundLogger,
    paused: str,
    action: str,
) -> NoReturn:
    """Call `one_round` forever (see module doc); `paused`/`action` name the retry log line."""
    backoff = Backoff(base=0.2, cap=5.0)
    while True:
        delay = await retry_forever(
            one_round, retry_on=DatabaseUnavailable, backoff=backoff, log=log, event=paused,
            action=action, sleep=waker.sleep,
        )
        await waker.sleep(delay)
