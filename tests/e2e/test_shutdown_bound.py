"""A service's shutdown is bounded: gone `shutdown_bound(grace)` seconds after SIGTERM.

Compose's `stop_grace_period` (and Kubernetes' termination grace) is set above that bound,
so an engine never has to SIGKILL a tm process. Each case runs `tm.runner.run` in its own
Python process, with a small grace and CLEANUP_S, and a `main` that signals its own process
(SIGTERM) and then misbehaves in one way.
"""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
import trio

from tm import runner

pytestmark = pytest.mark.e2e

GRACE = 0.5
CLEANUP = 1.0

PROGRAM = textwrap.dedent(
    """
    import os, signal, time, trio
    from tm import logs, runner
    logs.configure()
    runner.CLEANUP_S = {cleanup}
    async def main(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        print(time.monotonic(), flush=True)
        await stop.wait()
        {behaviour}
    runner.run(main, grace={grace})
    """
)

BEHAVIOURS = {
    # Stops at once: exit 0, well inside the bound.
    "prompt": "return",
    # Ignores the stop until the grace deadline cancels it: still exit 0.
    "slow": "await trio.sleep_forever()",
    # Shielded cleanup that never ends: the bound ends it, exit 1 with a log line.
    "stuck": "with trio.CancelScope(shield=True):\n            await trio.sleep(3600)",
    # A blocked event loop (no checkpoint at all): the bound still ends it.
    "blocked": "__import__('time').sleep(3600)",
}


async def stop_and_wait(behaviour: str) -> tuple[int, float, str]:
    """Run the program; (exit status, seconds from its SIGTERM to its exit, stderr)."""
    code = PROGRAM.format(cleanup=CLEANUP, grace=GRACE, behaviour=BEHAVIOURS[behaviour])
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True,
                                      capture_stderr=True, check=False)
    ended = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
    signalled = float(done.stdout.decode().split()[0])
    return done.returncode, ended - signalled, done.stderr.decode()


def test_the_bound_is_the_grace_plus_the_cleanup_allowance() -> None:
    assert runner.shutdown_bound(5.0) == 5.0 + runner.CLEANUP_S


@pytest.mark.parametrize("behaviour", ["prompt", "slow"])
async def test_a_service_that_stops_by_its_grace_exits_0(behaviour: str) -> None:
    status, _elapsed, stderr = await stop_and_wait(behaviour)
    assert status == 0, stderr
    assert "action=shutdown " in stderr or '"shutdown"' in stderr, stderr
    assert "shutdown_overrun" not in stderr


@pytest.mark.parametrize("behaviour", ["stuck", "blocked"])
async def test_a_service_stuck_past_the_bound_exits_1_by_itself(behaviour: str) -> None:
    status, elapsed, stderr = await stop_and_wait(behaviour)
    assert status == 1, stderr
    assert "shutdown_overrun" in stderr, stderr
    # It waited for the whole bound (it did not exit early); the upper side is the
    # process's own timer, not something a test on a loaded machine can time.
    assert elapsed >= GRACE + CLEANUP - 0.1
