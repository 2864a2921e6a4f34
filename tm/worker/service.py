"""`serve_worker`: hold pushed tasks, run them, report, heartbeat; drain on stop.

The nursery tree (each part in its module, wired together by `Worker`):

    serve_worker
    ├── gRPC server      WorkerService: push, cancel, drain            (Worker, execution)
    ├── executors        concurrency of them: run queued tasks in push order  (execution)
    ├── session          register, then heartbeat; re-register with backoff   (session)
    └── reporter         sends updates in batches, keeps them while the
                         coordinator is away and retries: no report lost      (outbox)

Invariants: the worker never holds more than `capacity = concurrency + queue_size` tasks;
every accepted task ends in exactly one report — completed, failed, cancelled, or
returned unstarted when draining (tm.worker.execution).
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import partial

import structlog
import trio

from tm import metrics, tls
from tm.aio.grpc import CoordinatorPeer, open_peer, serve_grpc, worker_service
from tm.core.addresses import join_address, split_address
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import WorkerSettings
from tm.worker.execution import Execution
from tm.worker.executors import Executor, make_executor
from tm.worker.outbox import Outbox
from tm.worker.session import Session

log = structlog.get_logger(__name__)


def advertised_address(host: str, port: int) -> str:
    """The address to give the coordinator when none is configured.

    A wildcard bind (0.0.0.0, ::) is not dialable, so the host's own address is used
    instead: in a container, that is the container's address on its network.
    """
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return join_address(host, port)


class Worker:
    """One worker's parts, and the WorkerService they answer (tm.aio.grpc.WorkerHandlers)."""

    def __init__(self, settings: WorkerSettings, executor: Executor) -> None:
        self.settings = settings
        self.id = settings.worker_id or f"w-{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
        self.log = log.bind(worker_id=self.id)
        self.outbox = Outbox(self.id, settings)
        self.execution = Execution(self.id, settings, executor, self.outbox)
        self.session = Session(self.id, settings, self.execution, self.outbox)

    def __repr__(self) -> str:
        return f"<Worker {self.id} {self.execution!r} {self.outbox!r}>"

    async def push(self, request: pb.PushRequest) -> pb.PushResponse:
        return self.execution.push(request)

    async def cancel(self, request: pb.CancelRequest) -> pb.CancelResponse:
        return self.execution.cancel(request)

    async def drain(self, request: pb.DrainRequest) -> pb.DrainResponse:
        self.start_draining()
        return pb.DrainResponse(running=self.execution.running())

    def start_draining(self) -> None:
        """Take no more tasks, hand the queued ones back, and tell the coordinator now."""
        if self.execution.start_draining():
            self.session.heartbeat_now()


async def serve_worker(
    settings: WorkerSettings,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a worker until `stop` is set (then drain gracefully) or it is cancelled.

    Reports the advertised address. Must run inside `trio_asyncio.open_loop()`.
    """
    worker = Worker(settings, make_executor(settings.executor, settings.run_as))
    execution = worker.execution
    host, port = split_address(settings.grpc_addr)
    async with trio.open_nursery() as nursery:
        server_tls = tls.server_context(settings.tls) if settings.tls else None
        client_tls = tls.client_context(settings.tls) if settings.tls else None
        bound = await nursery.start(partial(
            serve_grpc, [worker_service(worker, logger=worker.log)], host, port,
            ssl=server_tls))
        address = settings.advertise or advertised_address(bound[0], bound[1])
        execution.watch_metrics()
        worker.outbox.watch_metrics()
        if settings.metrics_addr:
            await nursery.start(metrics.serve_metrics, settings.metrics_addr)
        async with (
            open_peer(CoordinatorPeer, settings.coordinator, client_tls) as peer,
            trio.open_nursery() as work,
        ):
            for _ in range(settings.concurrency):
                work.start_soon(execution.run_executor)
            work.start_soon(worker.session.serve, peer, address)
            work.start_soon(worker.outbox.serve_reporter, peer, execution.capacity_message)
            worker.log.info(
                "worker ready",
                action="worker_ready",
                address=address,
                executor=settings.executor,
                capacity=execution.capacity,
                pid=os.getpid(),
            )
            task_status.started(address)
            await (stop if stop is not None else trio.Event()).wait()
            worker.start_draining()
            with trio.move_on_after(settings.drain_grace_s):
                await execution.wait_idle()
            execution.abandon()  # past the grace period: leave them to the leases
            await worker.outbox.flush(timeout=settings.rpc_timeout_s)
            work.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
