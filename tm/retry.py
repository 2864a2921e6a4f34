"""Retry forever with capped, jittered exponential backoff: the one loop every service uses.

`retry_forever(attempt, ...)` awaits `attempt()` until it returns, and returns its result.
After each failure of a kind it was told to retry it logs one warning line — the caller's
event and `action=`, plus `error` and `retry_in` — and sleeps the next delay of its
`Backoff` (tm.core.backoff.exponential: base·2^(n-1) capped, over [d/2, d)). Anything
else, cancellation included, passes through at once: a retry never hides a bug or outlives
its cancel scope.

The count of failures in a row starts again when an attempt returns, or earlier when the
attempt calls `backoff.reset()` on the way: a session that registered and then ran for an
hour is retried after the base delay when it breaks, not after the cap. `sleep` may be a
wakeable sleep (the coordinator's rounds pass their `Waker`'s); `give_up_at` (trio time)
turns "forever" into "until the next try would start after it", then the failure is
raised.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from structlog.typing import FilteringBoundLogger

from tm.core.backoff import exponential

T = TypeVar("T")


class Backoff:
    """Failures in a row and the delay after the next one."""

    __slots__ = ("base", "cap", "failures")

    def __init__(self, *, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Backoff base={self.base} cap={self.cap} failures={self.failures}>"

    def reset(self) -> None:
        """Progress was made: the next failure waits the base delay again."""
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; returns how long to wait before the next try."""
        self.failures += 1
        return exponential(self.failures, base=self.base, cap=self.cap, jitter=random.random())


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: type[Exception] | tuple[type[Exception], ...],
    backoff: Backoff,
    log: FilteringBoundLogger,
    event: str,
    action: str,
    sleep: Callable[[float], Awaitable[object]] = trio.sleep,
    give_up_at: float = math.inf,
    **fields: object,
) -> T:
    """Await `attempt()` until it returns (see the module docstring); `fields` are logged
    with each retry line."""
    while True:
        try:
            result = await attempt()
        except retry_on as exc:
            delay = backoff.failed()
            if give_up_at < math.inf and trio.current_time() + delay > give_up_at:
                raise
            log.warning(event, action=action, error=str(exc), retry_in=round(delay, 2), **fields)
            await sleep(delay)
            continue
        backoff.reset()
        return result
