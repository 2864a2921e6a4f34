"""`serve_coordinator`: registers workers, dispatches due tasks to them, recovers lost ones.

The nursery tree (each part in its module, all over one `Coordinator`: tm.coordinator.state):

    serve_coordinator
    ├── gRPC server     CoordinatorService: register, heartbeat, report   (rpc)
    ├── dispatcher      claim + push rounds; push[batch], undo[batch]     (dispatcher)
    ├── watch[worker]   one per worker: its heartbeat deadline            (liveness)
    ├── reaper          recovers tasks whose lease expired                (liveness)
    ├── notifications   LISTEN tm_due / tm_cancel; cancel[task]           (notifications)
    └── recurring       creates the tasks of recurring schedules          (recurring)

Invariants: no database lock is held while talking to a worker; a worker is never pushed
more tasks than its credit (tm.core.dispatch); a task that was not certainly delivered is
left to heartbeats and leases rather than pushed twice blindly.
"""

from __future__ import annotations

from functools import partial

import structlog
import trio

from tm import metrics, tls
from tm.aio.grpc import coordinator_service, serve_grpc
from tm.aio.pg import open_database
from tm.coordinator.dispatcher import Dispatcher
from tm.coordinator.liveness import Liveness
from tm.coordinator.notifications import Notifications
from tm.coordinator.recurring import serve_recurring
from tm.coordinator.rpc import CoordinatorService
from tm.coordinator.state import Coordinator, new_coordinator_id
from tm.core.addresses import split_address
from tm.db.migrate import migrate
from tm.settings import CoordinatorSettings

log = structlog.get_logger(__name__)


async def serve_coordinator(
    settings: CoordinatorSettings,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a coordinator until `stop` is set or it is cancelled; reports the bound address.

    Waits for the database (logged backoff) and applies migrations first. Stopping closes
    the gRPC server; tasks held by its workers stay theirs (workers reconnect to any
    coordinator and re-register them). Must run inside `trio_asyncio.open_loop()`.
    """
    coordinator_id = new_coordinator_id()
    bound_log = log.bind(coordinator_id=coordinator_id)
    host, port = split_address(settings.grpc_addr)
    async with open_database(
        settings.database_url, max_size=settings.pool_size, log=bound_log
    ) as db:
        await migrate(db)
        coordinator = Coordinator(settings, db, coordinator_id)
        async with trio.open_nursery() as nursery:
            liveness = Liveness(coordinator, nursery)
            handlers = CoordinatorService(
                coordinator, liveness, tls.client_context(settings.tls) if settings.tls else None
            )
            bound = await nursery.start(partial(
                serve_grpc, [coordinator_service(handlers, logger=bound_log)], host, port,
                ssl=tls.server_context(settings.tls) if settings.tls else None,
            ))
            nursery.start_soon(Dispatcher(coordinator, nursery).dispatch_forever)
            nursery.start_soon(Notifications(coordinator, nursery).follow_forever)
            nursery.start_soon(liveness.reap_forever)
            nursery.start_soon(serve_recurring, settings, db, coordinator.id)
            metrics.WORKERS.set_function(lambda: len(coordinator.registry))
            metrics.watch_pool("coordinator", db.statistics)
            if settings.metrics_addr:
                await nursery.start(metrics.serve_metrics, settings.metrics_addr)
            address = f"{bound[0]}:{bound[1]}"
            bound_log.info("coordinator ready", action="coordinator_ready", address=address)
            task_status.started(address)
            try:
                await (stop if stop is not None else trio.Event()).wait()
            finally:
                metrics.WORKERS.set_function(lambda: 0)  # let this coordinator go
            nursery.cancel_scope.cancel()
