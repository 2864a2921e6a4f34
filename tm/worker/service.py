"""`serve_worker`: hold pushed tasks, run them, report, heartbeat; drain on stop.

The nursery tree:

    serve_worker
    ├── gRPC server (WorkerService: push, cancel, drain)
    ├── executors (concurrency of them)   take queued tasks in push order and run them
    ├── session                  register, then heartbeat; on any failure re-register
    │                            with backoff, forever (never gives up)
    └── reporter                 sends updates in batches (size or a few ms), keeps them
                                 while the coordinator is away and retries: no report lost

Invariants: the worker never holds more than `capacity = concurrency + queue_size` tasks
(pushes beyond it are rejected, per task); every accepted task ends in exactly one
report — completed, failed, cancelled, or returned unstarted when draining.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
import trio

from tm import metrics, tls
from tm.aio.grpc import RpcFailed, bridge, open_peer, serve_grpc
from tm.core.addresses import join_address, split_address
from tm.core.backoff import exponential
from tm.core.lifecycle import TIMEOUT
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import WorkerSettings
from tm.worker.executors import Executor, make_executor

log = structlog.get_logger("tm.worker")

Kind = pb.UpdateKind


@dataclass(eq=False)
class Held:
    task: pb.Task
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: bool = False
    cancelled: bool = False


def _now_us() -> int:
    return time.time_ns() // 1000


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
    def __init__(self, settings: WorkerSettings, executor: Executor) -> None:
        self.settings = settings
        self.id = settings.worker_id or f"w-{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
        self.capacity = settings.concurrency + settings.queue_size
        self.executor = executor
        self.held: dict[str, Held] = {}
        self.accepted_total = 0
        self.released_total = 0
        self.draining = False
        self.address = ""
        self._queue_send, self._queue_receive = trio.open_memory_channel[Held](math.inf)
        self._outbox: list[pb.TaskUpdate] = []
        # `started` updates still in the outbox and not in flight (see _report).
        self._unsent_started: dict[str, pb.TaskUpdate] = {}
        self._outbox_ready = trio.Event()
        self._idle = trio.Event()
        self._heartbeat_now = trio.Event()

    def __repr__(self) -> str:
        running = sum(h.started for h in self.held.values())
        return (
            f"<Worker {self.id} [{running} running, {len(self.held) - running} queued, "
            f"{len(self._outbox)} reports waiting{', draining' if self.draining else ''}]>"
        )

    def watch_metrics(self) -> None:
        def running() -> int:
            return sum(h.started for h in self.held.values())

        metrics.RUNNING.labels(self.id).set_function(running)
        metrics.QUEUE_DEPTH.labels(self.id).set_function(lambda: len(self.held) - running())
        metrics.REPORTS_PENDING.labels(self.id).set_function(lambda: len(self._outbox))

    def capacity_message(self) -> pb.Capacity:
        free = 0 if self.draining else max(0, self.capacity - len(self.held))
        return pb.Capacity(
            capacity=self.capacity,
            free_slots=free,
            accepted_total=self.accepted_total,
            draining=self.draining,
            released_total=self.released_total,
        )

    def held_messages(self) -> list[pb.HeldTask]:
        """What heartbeats renew the leases of: the tasks held, and the tasks finished here
        whose result has not reached the coordinator yet. Their lease must not lapse while
        the report waits out an outage: an expired lease would run a finished task again."""
        held = [
            pb.HeldTask(task_id=h.task.task_id, attempt=h.task.attempt) for h in self.held.values()
        ]
        held += [
            pb.HeldTask(task_id=u.task_id, attempt=u.attempt)
            for u in self._outbox
            if u.kind != Kind.STARTED and u.task_id not in self.held
        ]
        return held

    # ------------------------------------------------------------------ WorkerService

    async def push(self, request: pb.PushRequest) -> pb.PushResponse:
        accepted, rejected = [], []
        for task in request.tasks:
            if self.draining or len(self.held) >= self.capacity or not task.task_id:
                rejected.append(task.task_id)
                continue
            if task.task_id in self.held:  # a duplicate push of what we hold: keep ours
                current = self.held[task.task_id]
                if task.attempt > current.task.attempt and not current.started:
                    current.task = task
                accepted.append(task.task_id)
                continue
            held = Held(task)
            self.held[task.task_id] = held
            self.accepted_total += 1
            self._queue_send.send_nowait(held)
            accepted.append(task.task_id)
        if accepted:
            log.debug("tasks accepted", action="tasks_accepted", count=len(accepted))
        if rejected:
            log.info(
                "tasks rejected",
                action="tasks_rejected",
                count=len(rejected),
                draining=self.draining,
            )
        return pb.PushResponse(
            accepted=accepted, rejected=rejected, capacity=self.capacity_message()
        )

    async def cancel(self, request: pb.CancelRequest) -> pb.CancelResponse:
        held = self.held.get(request.task_id)
        if held is None or (request.attempt and held.task.attempt != request.attempt):
            return pb.CancelResponse(found=False)
        held.cancelled = True
        held.scope.cancel()
        log.info(
            "task cancel requested",
            action="task_cancel",
            task_id=request.task_id,
            attempt=held.task.attempt,
            running=held.started,
        )
        return pb.CancelResponse(found=True)

    async def drain(self, request: pb.DrainRequest) -> pb.DrainResponse:
        self.start_draining()
        return pb.DrainResponse(running=sum(h.started for h in self.held.values()))

    # ------------------------------------------------------------------ execution

    def _report(self, held: Held, kind: pb.UpdateKind, **fields: Any) -> None:
        """Queue an update. A result whose `started` update has not been sent yet replaces
        it (carrying its time), so a fast task costs one update, not two."""
        task = held.task
        now = _now_us()
        started = self._unsent_started.pop(task.task_id, None)
        if kind != Kind.STARTED and started is not None and started.attempt == task.attempt:
            started.started_at_us = started.at_us
            started.kind = kind
            started.at_us = now
            for name, value in fields.items():
                setattr(started, name, value)
        else:
            update = pb.TaskUpdate(task_id=task.task_id, attempt=task.attempt, kind=kind,
                                   at_us=now, **fields)
            self._outbox.append(update)
            if kind == Kind.STARTED:
                self._unsent_started[task.task_id] = update
        self._outbox_ready.set()

    def _finish(self, held: Held) -> None:
        if self.held.pop(held.task.task_id, None) is not None:
            self.released_total += 1
        if not self.held:
            self._idle.set()

    async def run_executor(self) -> None:
        async for held in self._queue_receive:
            if held.task.task_id not in self.held or held.cancelled:
                if held.cancelled:
                    self._report(held, Kind.CANCELLED, error="cancelled")
                self._finish(held)
                continue
            if self.draining:
                continue  # start_draining hands queued tasks back
            await self._execute(held)

    async def _execute(self, held: Held) -> None:
        task = held.task
        held.started = True
        self._report(held, Kind.STARTED)
        log.debug("task started", action="task_started", task_id=task.task_id, attempt=task.attempt)
        timeout = task.timeout_s if task.timeout_s > 0 else math.inf
        result = None
        error = None
        with held.scope:
            with trio.move_on_after(timeout) as timer:
                try:
                    result = await self.executor(task.command)
                except Exception as exc:
                    error = f"executor error: {type(exc).__name__}: {exc}"
            if timer.cancelled_caught:
                error = TIMEOUT
        if held.cancelled:
            outcome = "cancelled"
            self._report(held, Kind.CANCELLED, error="cancelled")
        elif error is not None:
            outcome = "failed"
            self._report(held, Kind.FAILED, error=error, output=result.output if result else "")
        elif result is not None and result.exit_code == 0:
            outcome = "completed"
            self._report(held, Kind.COMPLETED, exit_code=0, output=result.output)
        elif result is not None:
            outcome = "failed"
            self._report(held, Kind.FAILED, exit_code=result.exit_code, output=result.output,
                         error=f"exit code {result.exit_code}")
        else:  # stopped past the drain grace: no report; the task's lease decides
            outcome = "abandoned"
        metrics.EXECUTIONS.labels(self.id, outcome).inc()
        log.info("task finished", action="task_finished", task_id=task.task_id,
                 attempt=task.attempt, outcome=outcome, error=error,
                 exit_code=result.exit_code if result else None)
        self._finish(held)

    def start_draining(self) -> None:
        """Take no more tasks; hand queued (unstarted) ones back at once."""
        if self.draining:
            return
        self.draining = True
        returned = [h for h in self.held.values() if not h.started]
        for held in returned:
            self._report(held, Kind.RETURNED)
            self._finish(held)
        if not self.held:
            self._idle.set()
        self._heartbeat_now.set()
        log.info(
            "draining",
            action="worker_draining",
            worker_id=self.id,
            returned=len(returned),
            running=len(self.held),
        )

    async def wait_idle(self) -> None:
        while self.held:
            self._idle = trio.Event()
            await self._idle.wait()

    # ------------------------------------------------------------------ coordinator

    async def run_session(self, peer: object) -> None:
        """Register and heartbeat forever; any failure means: back off, register again."""
        tries = 0
        while True:
            try:
                interval = await self._register(peer)
                tries = 0
                while True:
                    with trio.move_on_after(interval):
                        await self._heartbeat_now.wait()
                    self._heartbeat_now = trio.Event()
                    response = await peer.call(  # type: ignore[attr-defined]
                        "heartbeat",
                        pb.HeartbeatRequest(
                            worker_id=self.id,
                            capacity=self.capacity_message(),
                            held=self.held_messages(),
                        ),
                        timeout=self.settings.rpc_timeout_s,
                    )
                    if not response.known:
                        log.info(
                            "coordinator forgot us; registering again",
                            action="reregister",
                            worker_id=self.id,
                        )
                        break
            except RpcFailed as exc:
                tries += 1
                delay = exponential(tries, base=0.1, cap=5.0, jitter=random.random())
                log.warning(
                    "coordinator unreachable",
                    action="coordinator_retry",
                    worker_id=self.id,
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                await trio.sleep(delay)

    async def _register(self, peer: object) -> float:
        response = await peer.call(  # type: ignore[attr-defined]
            "register",
            pb.RegisterRequest(
                worker_id=self.id,
                address=self.address,
                capacity=self.capacity_message(),
                held=self.held_messages(),
                concurrency=self.settings.concurrency,
            ),
            timeout=self.settings.rpc_timeout_s,
        )
        log.info(
            "registered",
            action="worker_registered",
            worker_id=self.id,
            coordinator_id=response.coordinator_id,
            address=self.address,
        )
        if self._outbox:
            self._outbox_ready.set()  # deliver anything buffered while away
        return max(0.05, response.heartbeat_interval_ms / 1000 or 1.0)

    async def run_reporter(self, peer: object) -> None:
        """Send updates in batches; keep them (in order) and retry while sending fails."""
        tries = 0
        while True:
            await self._outbox_ready.wait()
            if len(self._outbox) < self.settings.report_batch:
                await trio.sleep(self.settings.report_flush_s)  # gather a batch
            batch = self._outbox[: self.settings.report_batch]
            if not batch:
                self._outbox_ready = trio.Event()
                continue
            for update in batch:  # in flight from now on: no longer replaceable
                if update.kind == Kind.STARTED:
                    self._unsent_started.pop(update.task_id, None)
            self._outbox_ready = trio.Event()
            if len(self._outbox) > len(batch):
                self._outbox_ready.set()
            try:
                await peer.call(  # type: ignore[attr-defined]
                    "report",
                    pb.ReportRequest(
                        worker_id=self.id, updates=batch, capacity=self.capacity_message()
                    ),
                    timeout=self.settings.rpc_timeout_s,
                )
            except RpcFailed as exc:
                tries += 1
                delay = exponential(tries, base=0.1, cap=5.0, jitter=random.random())
                log.warning(
                    "report failed; keeping it",
                    action="report_retry",
                    worker_id=self.id,
                    updates=len(batch),
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                self._outbox_ready.set()
                await trio.sleep(delay)
                continue
            tries = 0
            del self._outbox[: len(batch)]

    async def flush_reports(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self._outbox:
                self._outbox_ready.set()
                await trio.sleep(0.01)
            return True
        return False


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
    host, port = split_address(settings.grpc_addr)
    async with trio.open_nursery() as nursery:
        server_tls = tls.server_context(settings.tls) if settings.tls else None
        client_tls = tls.client_context(settings.tls) if settings.tls else None
        bound = await nursery.start(partial(
            serve_grpc, [bridge(pb.WorkerServiceBase, worker)], host, port, ssl=server_tls))
        worker.address = settings.advertise or advertised_address(bound[0], bound[1])
        worker.watch_metrics()
        if settings.metrics_addr:
            await nursery.start(metrics.serve_metrics, settings.metrics_addr)
        async with (
            open_peer(pb.CoordinatorServiceStub, settings.coordinator, client_tls) as peer,
            trio.open_nursery() as work,
        ):
            for _ in range(settings.concurrency):
                work.start_soon(worker.run_executor)
            work.start_soon(worker.run_session, peer)
            work.start_soon(worker.run_reporter, peer)
            log.info(
                "worker ready",
                action="worker_ready",
                worker_id=worker.id,
                address=worker.address,
                executor=settings.executor,
                capacity=worker.capacity,
                pid=os.getpid(),
            )
            task_status.started(worker.address)
            await (stop if stop is not None else trio.Event()).wait()
            worker.start_draining()
            with trio.move_on_after(settings.drain_grace_s):
                await worker.wait_idle()
            for held in list(worker.held.values()):
                held.scope.cancel()  # past the grace period: leave them to the leases
            await worker.flush_reports(timeout=settings.rpc_timeout_s)
            work.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
