"""tm.core.backoff.exponential: capped exponential backoff with "equal jitter"."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tm.core.backoff import exponential, schedule, spread

FAST = settings(max_examples=200, deadline=None, database=None)

bases = st.floats(min_value=0.001, max_value=100.0)
# Caps below base·2^62, so the code's internal clamp of the exponent (which only guards
# against float overflow) never matters; tries go far enough past it to exercise that clamp.
caps = st.floats(min_value=0.001, max_value=1e9)
jitters = st.floats(min_value=0.0, max_value=1.0)
tries_ = st.integers(min_value=1, max_value=500)


def uncapped(tries: int, base: float) -> float:
    return base * 2.0 ** (tries - 1)


@pytest.mark.parametrize(
    ("tries", "jitter", "expected"),
    [
        (1, 1.0, 1.0),
        (2, 1.0, 2.0),
        (3, 1.0, 4.0),
        (3, 0.0, 2.0),
        (3, 0.5, 3.0),
        (6, 1.0, 32.0),
        (7, 1.0, 60.0),  # 64 capped to 60
        (7, 0.0, 30.0),
        (10_000, 1.0, 60.0),  # no overflow for absurd try counts
    ],
)
def test_examples(tries: int, jitter: float, expected: float) -> None:
    assert exponential(tries, base=1.0, cap=60.0, jitter=jitter) == expected


def test_default_jitter_is_the_full_delay() -> None:
    assert exponential(4, base=0.5, cap=100.0) == 4.0


@FAST
@given(st.integers(max_value=0), bases, caps, jitters)
def test_no_delay_before_the_first_try(tries: int, base: float, cap: float, jitter: float) -> None:
    assert exponential(tries, base=base, cap=cap, jitter=jitter) == 0.0


@FAST
@given(tries_, bases, caps, jitters)
@example(1, 1.0, 60.0, 0.0)
@example(63, 0.001, 1e9, 1.0)
def test_within_half_and_full_capped_delay(
    tries: int, base: float, cap: float, jitter: float
) -> None:
    d = min(cap, uncapped(tries, base))
    delay = exponential(tries, base=base, cap=cap, jitter=jitter)
    assert d / 2 <= delay <= d
    assert delay <= cap


@FAST
@given(tries_, bases, caps, st.floats(allow_nan=False))
def test_jitter_outside_unit_interval_is_clamped(
    tries: int, base: float, cap: float, jitter: float
) -> None:
    delay = exponential(tries, base=base, cap=cap, jitter=jitter)
    clamped = exponential(tries, base=base, cap=cap, jitter=min(max(jitter, 0.0), 1.0))
    assert delay == clamped
    assert delay <= cap


@FAST
@given(tries_, bases, caps, jitters)
def test_monotone_in_tries_for_fixed_jitter(
    tries: int, base: float, cap: float, jitter: float
) -> None:
    now = exponential(tries, base=base, cap=cap, jitter=jitter)
    after = exponential(tries + 1, base=base, cap=cap, jitter=jitter)
    assert now <= after


@FAST
@given(tries_, bases, caps, jitters, jitters)
def test_monotone_in_jitter(
    tries: int, base: float, cap: float, j1: float, j2: float
) -> None:
    low, high = sorted((j1, j2))
    assert exponential(tries, base=base, cap=cap, jitter=low) <= exponential(
        tries, base=base, cap=cap, jitter=high
    )


# --- the schedule the report statement indexes by the row's failure count ----------------


@FAST
@given(tries_, st.floats(min_value=0.0, max_value=100.0), st.floats(min_value=0.0, max_value=1e9),
       st.floats(allow_nan=False))
@example(1, 0.0, 0.0, 0.5)  # no delay at all: the schedule is one zero
@example(100, 1e-300, 1e300, 1.0)  # the exponent's limit, not the cap, ends the schedule
def test_schedule_entry_times_spread_is_the_delay(
    tries: int, base: float, cap: float, jitter: float
) -> None:
    """What tm/db/reports.py computes in SQL, from numbers computed here, is exponential()."""
    delays = schedule(base=base, cap=cap)
    entry = delays[min(tries, len(delays)) - 1]
    assert entry * spread(jitter) == exponential(tries, base=base, cap=cap, jitter=jitter)
    assert 1 <= len(delays) <= 63
    assert list(delays) == sorted(set(delays))  # growing, and ends where it stops growing


def test_schedule_examples() -> None:
    assert schedule(base=1.0, cap=60.0) == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
    assert schedule(base=5.0, cap=2.0) == (2.0,)
    assert schedule(base=0.0, cap=0.0) == (0.0,)
    assert spread(0.0) == 0.5 and spread(1.0) == 1.0 and spread(-3.0) == 0.5
