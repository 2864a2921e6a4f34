"""`serve_scheduler`: the HTTP API as a trio task."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tm import metrics
from tm.aio.pg import open_database
from tm.db.migrate import migrate
from tm.scheduler.app import create_app
from tm.scheduler.ingest import GroupCommit
from tm.settings import SchedulerSettings


def listen_binds(settings: SchedulerSettings) -> list[str]:
    """Bind `settings.http_addr` now; returns hypercorn binds (`fd://N`) handing it the sockets.

    The socket is made by hypercorn's own code, so addresses are read exactly as they were
    when hypercorn bound them; it sets SO_REUSEPORT when it expects several worker
    processes, which is how `reuse_port` asks for it. `serve` starts listening.
    """
    sockets_config = Config()
    sockets_config.bind = [settings.http_addr]
    sockets_config.workers = 2 if settings.reuse_port else 1
    sockets = sockets_config.create_sockets()
    return [f"fd://{sock.detach()}" for sock in sockets.insecure_sockets]


async def serve_scheduler(
    settings: SchedulerSettings,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; reports the bound address ('127.0.0.1:8081').

    Waits (with logged backoff) for the database and applies pending migrations first.
    Setting `stop` stops accepting connections, lets in-flight requests finish (3 s at
    most) and returns; cancelling stops at once. With `settings.reuse_port` the socket is
    bound with SO_REUSEPORT, so sibling processes can serve the same address.
    Must run inside `trio_asyncio.open_loop()`.
    """
    async with open_database(settings.database_url, max_size=settings.pool_size) as db:
        await migrate(db)
        ingest = GroupCommit(db)
        metrics.watch_pool("scheduler", db.statistics)
        config = Config()
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 3.0
        config.keep_alive_timeout = 75
        config.h11_max_incomplete_size = 64 * 1024
        stop = stop if stop is not None else trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.run)
            app = create_app(settings, db, ingest)
            async with trio.open_nursery() as http:
                config.bind = listen_binds(settings)
                binds = await http.start(partial(serve, app, config, shutdown_trigger=stop.wait))
                task_status.started(binds[0].split("://", 1)[1])
            # serve() returned: every request has been answered, so no insert is waiting.
            nursery.cancel_scope.cancel()

