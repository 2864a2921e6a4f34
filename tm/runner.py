"""Running services as a process: the trio-asyncio loop, signals, and a shutdown deadline.

The first SIGTERM/SIGINT sets the `stop` event each service watches (graceful: workers
drain, servers stop accepting) and puts a deadline of `grace` seconds on the whole tree; a
second signal cancels at once.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
import trio
import trio_asyncio

log = structlog.get_logger(__name__)

Main = Callable[[trio.Event], Awaitable[None]]


async def run_until_signal(main: Main, *, grace: float) -> None:
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if stop.is_set():
                        log.warning(
                            "second signal: stopping now", action="shutdown_now", signal=name
                        )
                        nursery.cancel_scope.cancel()
                        return
                    log.info("shutting down", action="shutdown", signal=name, grace_s=grace)
                    stop.set()
                    nursery.cancel_scope.deadline = trio.current_time() + grace

            nursery.start_soon(watch_signals)
            await main(stop)
            nursery.cancel_scope.cancel()


def run(main: Main, *, grace: float) -> None:
    trio.run(partial(run_until_signal, main, grace=grace))
