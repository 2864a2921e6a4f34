"""Retry and reconnect delays: capped exponential backoff with jitter.

`jitter` is passed in (a number in [0, 1)) so the functions stay pure and testable; callers
draw it from `random.random()`.
"""

from __future__ import annotations


def exponential(tries: int, *, base: float, cap: float, jitter: float = 1.0) -> float:
    """Delay before try number `tries + 1` (tries >= 1): base·2^(tries-1), capped, jittered.

    With jitter j the delay is spread over [d/2, d) — "equal jitter" — so retries of many
    tasks that failed together do not come back together, yet never wait less than half.
    """
    if tries < 1:
        return 0.0
    delay = min(cap, base * 2.0 ** min(tries - 1, 62))
    return delay * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))
