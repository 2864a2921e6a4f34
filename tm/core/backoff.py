"""Retry and reconnect delays: capped exponential backoff with jitter.

`jitter` is passed in (a number in [0, 1)) so the functions stay pure and testable; callers
draw it from `random.random()`.

A failed task's retry delay depends on how many times it has failed, which only its row
knows when a batch of reports is applied. So the report statement receives `schedule`
(the few distinct capped delays) and each report's `spread`, and picks the entry for the
row's count: the same number `exponential` gives, computed here, with no round trip to
read the counts first (tests/unit/test_backoff.py checks the two agree).
"""

from __future__ import annotations

import functools

# Beyond 2^62 the float delay would only ever be capped: the exponent stops growing there.
_MAX_DOUBLINGS = 62


def ceiling(tries: int, *, base: float, cap: float) -> float:
    """The delay before try number `tries + 1` (tries >= 1) before jitter: base·2^(tries-1),
    capped."""
    return min(cap, base * 2.0 ** min(tries - 1, _MAX_DOUBLINGS))


def spread(jitter: float) -> float:
    """The share of the ceiling a delay with `jitter` waits: [1/2, 1] for jitter in [0, 1]."""
    return 0.5 + 0.5 * min(max(jitter, 0.0), 1.0)


def exponential(tries: int, *, base: float, cap: float, jitter: float = 1.0) -> float:
    """Delay before try number `tries + 1` (tries >= 1): base·2^(tries-1), capped, jittered.

    With jitter j the delay is spread over [d/2, d) — "equal jitter" — so retries of many
    tasks that failed together do not come back together, yet never wait less than half.
    """
    if tries < 1:
        return 0.0
    return ceiling(tries, base=base, cap=cap) * spread(jitter)


@functools.lru_cache(maxsize=64)  # a few (base, cap) pairs per process
def schedule(*, base: float, cap: float) -> tuple[float, ...]:
    """`ceiling` for tries 1, 2, ... up to the first that stops growing (it reached the cap,
    or the exponent's limit): for any tries >= 1,

        exponential(tries, ...) == schedule(...)[min(tries, len(schedule(...))) - 1]
                                   * spread(jitter)
    """
    delays = [ceiling(1, base=base, cap=cap)]
    for tries in range(2, _MAX_DOUBLINGS + 2):
        delay = ceiling(tries, base=base, cap=cap)
        if delay == delays[-1]:
            break
        delays.append(delay)
    return tuple(delays)
