"""Running services as a process: the trio-asyncio loop, signals, and a bounded shutdown.

The first SIGTERM/SIGINT sets the `stop` event each service watches (graceful: workers
drain, servers stop accepting) and puts a deadline of `grace` seconds on the whole tree; a
second signal cancels at once.

Past the deadline, cleanup that must not be cut short still runs (closing gRPC connections,
the database pool, child processes: each step shielded and bounded on its own). Whatever it
does, the process is gone `grace + CLEANUP_S` seconds after the first signal: if it is still
running then, it logs `action=shutdown_overrun` and exits with status 1. So a supervisor that
waits longer than `shutdown_bound(grace)` before SIGKILL (compose's `stop_grace_period`,
Kubernetes' `terminationGracePeriodSeconds`) never has to kill it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
import trio
import trio_asyncio

log = structlog.get_logger(__name__)

Main = Callable[[trio.Event], Awaitable[None]]

# Seconds the bounded cleanup after the grace period may take in all (the longest path:
# 2 s for gRPC connections, 5 s for the database pool or for child processes to exit).
CLEANUP_S = 10.0


def shutdown_bound(grace: float) -> float:
    """Seconds from the first signal by which the process has exited, whatever happens."""
    return grace + CLEANUP_S


def _exit_unless_done(after: float) -> threading.Timer:
    """Exit the process (status 1) in `after` seconds unless the timer is cancelled first.

    A thread, not a trio deadline: shielded cleanup and a blocked event loop must not
    postpone it.
    """

    def overrun() -> None:
        log.error("shutdown took too long: exiting now", action="shutdown_overrun",
                  bound_s=after)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(after, overrun)
    timer.daemon = True
    timer.start()
    return timer


async def run_until_signal(main: Main, *, grace: float) -> None:
    stop = trio.Event()
    timers: list[threading.Timer] = []
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if stop.is_set():
                            log.warning(
                                "second signal: stopping now", action="shutdown_now",
                                signal=name,
                            )
                            nursery.cancel_scope.cancel()
                            return
                        log.info("shutting down", action="shutdown", signal=name, grace_s=grace)
                        stop.set()
                        nursery.cancel_scope.deadline = trio.current_time() + grace
                        timers.append(_exit_unless_done(shutdown_bound(grace)))

                nursery.start_soon(watch_signals)
                await main(stop)
                nursery.cancel_scope.cancel()
    finally:
        for timer in timers:
            timer.cancel()


def run(main: Main, *, grace: float) -> None:
    trio.run(partial(run_until_signal, main, grace=grace))
