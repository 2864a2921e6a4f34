"""tm.retry.retry_forever: the retry loop of every service (database, rounds, recovery,
LISTEN followers, worker session and reporter).

Time is trio's autojump clock, so the backoff delays are exact and cost nothing; the log
lines are captured with structlog's testing helper.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import trio
from structlog.testing import capture_logs

from tm.retry import Backoff, retry_forever


class Down(Exception):
    pass


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


def failing(times: int, result: str = "ok", error: type[Exception] = Down) -> Any:
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(trio.current_time())
        if len(calls) <= times:
            raise error(f"failure {len(calls)}")
        return result

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


async def test_retries_with_capped_jittered_backoff_and_logs_each_retry(
    autojump_clock: trio.testing.MockClock, logs: list[dict[str, Any]]
) -> None:
    attempt = failing(6)
    backoff = Backoff(base=0.5, cap=5.0)
    result = await retry_forever(
        attempt, retry_on=Down, backoff=backoff, log=structlog.get_logger("t"),
        event="thing postponed", action="thing_retry", worker_id="w1",
    )
    assert result == "ok"
    assert backoff.failures == 0  # a success starts the count again
    waits = [b - a for a, b in zip(attempt.calls, attempt.calls[1:], strict=False)]
    full = [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]  # base·2^(n-1), capped
    assert len(waits) == len(full)
    for waited, delay in zip(waits, full, strict=True):
        assert delay / 2 <= waited <= delay
    assert [line["action"] for line in logs] == ["thing_retry"] * 6
    assert [line["error"] for line in logs] == [f"failure {n}" for n in range(1, 7)]
    assert all(line["event"] == "thing postponed" and line["log_level"] == "warning"
               and line["worker_id"] == "w1" for line in logs)
    assert [line["retry_in"] for line in logs] == [round(w, 2) for w in waits]


async def test_other_errors_pass_through_at_once(
    autojump_clock: trio.testing.MockClock, logs: list[dict[str, Any]]
) -> None:
    attempt = failing(1, error=ValueError)
    with pytest.raises(ValueError, match="failure 1"):
        await retry_forever(attempt, retry_on=Down, backoff=Backoff(base=1, cap=1),
                            log=structlog.get_logger("t"), event="e", action="a")
    assert len(attempt.calls) == 1
    assert logs == []


async def test_reset_by_the_attempt_starts_the_count_again(
    autojump_clock: trio.testing.MockClock, logs: list[dict[str, Any]]
) -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            backoff.reset()  # e.g. registered: the session itself breaks later
        if calls < 6:
            raise Down(str(calls))

    await retry_forever(attempt, retry_on=(Down,), backoff=backoff,
                        log=structlog.get_logger("t"), event="e", action="a")
    # failures 1, 2, 3 grow; the 4th came right after a reset: base delay again
    assert [line["retry_in"] for line in logs][3] <= 1.0
    assert [line["retry_in"] for line in logs][2] >= 2.0


async def test_a_given_sleep_is_used(logs: list[dict[str, Any]]) -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    with trio.fail_after(5):
        await retry_forever(failing(3), retry_on=Down, backoff=Backoff(base=10, cap=10),
                            log=structlog.get_logger("t"), event="e", action="a", sleep=sleep)
    assert len(slept) == 3 and all(5 <= s <= 10 for s in slept)


async def test_give_up_at_raises_the_failure_instead_of_sleeping_past_it(
    autojump_clock: trio.testing.MockClock, logs: list[dict[str, Any]]
) -> None:
    attempt = failing(100)
    began = trio.current_time()
    with pytest.raises(Down):
        await retry_forever(attempt, retry_on=Down, backoff=Backoff(base=1.0, cap=1.0),
                            log=structlog.get_logger("t"), event="e", action="a",
                            give_up_at=began + 3.0)
    assert trio.current_time() - began <= 3.0
    assert 3 <= len(attempt.calls) <= 7  # waits of 0.5-1 s fit in 3 s
    assert len(logs) == len(attempt.calls) - 1  # the last failure is raised, not logged


async def test_cancellation_is_not_retried(
    autojump_clock: trio.testing.MockClock, logs: list[dict[str, Any]]
) -> None:
    attempt = failing(1000)
    with trio.move_on_after(30) as scope:
        await retry_forever(attempt, retry_on=Down, backoff=Backoff(base=1.0, cap=2.0),
                            log=structlog.get_logger("t"), event="e", action="a")
    assert scope.cancelled_caught
    assert 15 <= len(attempt.calls) <= 31
