"""Execution: the tasks this worker holds, from their push to their one report.

    executor[concurrency]  (serve_worker's nursery) take queued tasks in push order and
                           run them on the executor (tm.worker.executors), each in its
                           own cancel scope with the task's timeout

Invariants: the worker never holds more than `capacity = concurrency + queue_size` tasks
(pushes beyond it are rejected, per task); a push of a task already held keeps the one
held (a later attempt replaces it only if it has not started). Every accepted task ends in
exactly one report in the outbox — completed, failed, cancelled, or returned unstarted
when draining — except one still running past the drain grace, which is abandoned to its
lease. Draining takes nothing new and hands the queued tasks back at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import structlog
import trio

from tm import metrics
from tm.core.lifecycle import TIMEOUT
from tm.core.reports import ReportKind as Kind
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import WorkerSettings
from tm.worker.executors import Executor
from tm.worker.outbox import Outbox

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class Held:
    task: pb.Task
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: bool = False
    cancelled: bool = False


class Execution:
    def __init__(
        self, worker_id: str, settings: WorkerSettings, executor: Executor, outbox: Outbox
    ) -> None:
        self.worker_id = worker_id
        self.capacity = settings.concurrency + settings.queue_size
        self.executor = executor
        self.outbox = outbox
        self.log = log.bind(worker_id=worker_id)
        self.held: dict[str, Held] = {}
        self.accepted_total = 0
        self.released_total = 0
        self.draining = False
        self._queue_send, self._queue_receive = trio.open_memory_channel[Held](math.inf)
        self._idle = trio.Event()

    def __repr__(self) -> str:
        running = self.running()
        return (
            f"<Execution {self.worker_id} [{running} running, {len(self.held) - running} "
            f"queued{', draining' if self.draining else ''}]>"
        )

    def running(self) -> int:
        return sum(h.started for h in self.held.values())

    def watch_metrics(self) -> None:
        metrics.RUNNING.labels(self.worker_id).set_function(self.running)
        metrics.QUEUE_DEPTH.labels(self.worker_id).set_function(
            lambda: len(self.held) - self.running())

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
            for u in self.outbox.results()
            if u.task_id not in self.held
        ]
        return held

    # ------------------------------------------------------------------ from the coordinator

    def push(self, request: pb.PushRequest) -> pb.PushResponse:
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
            self.log.debug("tasks accepted", action="tasks_accepted", count=len(accepted))
        if rejected:
            self.log.info(
                "tasks rejected",
                action="tasks_rejected",
                count=len(rejected),
                draining=self.draining,
            )
        return pb.PushResponse(
            accepted=accepted, rejected=rejected, capacity=self.capacity_message()
        )

    def cancel(self, request: pb.CancelRequest) -> pb.CancelResponse:
        held = self.held.get(request.task_id)
        if held is None or (request.attempt and held.task.attempt != request.attempt):
            return pb.CancelResponse(found=False)
        held.cancelled = True
        held.scope.cancel()
        self.log.info(
            "task cancel requested",
            action="task_cancel",
            task_id=request.task_id,
            attempt=held.task.attempt,
            running=held.started,
        )
        return pb.CancelResponse(found=True)

    def start_draining(self) -> bool:
        """Take no more tasks; hand queued (unstarted) ones back at once. Returns False if
        the worker was draining already."""
        if self.draining:
            return False
        self.draining = True
        returned = [h for h in self.held.values() if not h.started]
        for held in returned:
            self.outbox.add(held.task, Kind.RETURNED)
            self._finish(held)
        if not self.held:
            self._idle.set()
        self.log.info(
            "draining",
            action="worker_draining",
            returned=len(returned),
            running=len(self.held),
        )
        return True

    # ------------------------------------------------------------------ running

    async def run_executor(self) -> None:
        async for held in self._queue_receive:
            if held.task.task_id not in self.held or held.cancelled:
                if held.cancelled:
                    self.outbox.add(held.task, Kind.CANCELLED, error="cancelled")
                self._finish(held)
                continue
            if self.draining:
                continue  # start_draining hands queued tasks back
            await self._execute(held)

    async def _execute(self, held: Held) -> None:
        task = held.task
        held.started = True
        self.outbox.add(task, Kind.STARTED)
        self.log.debug("task started", action="task_started", task_id=task.task_id,
                       attempt=task.attempt)
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
            self.outbox.add(task, Kind.CANCELLED, error="cancelled")
        elif error is not None:
            outcome = "failed"
            self.outbox.add(task, Kind.FAILED, error=error, output=result.output if result else "")
        elif result is not None and result.exit_code == 0:
            outcome = "completed"
            self.outbox.add(task, Kind.COMPLETED, exit_code=0, output=result.output)
        elif result is not None:
            outcome = "failed"
            self.outbox.add(task, Kind.FAILED, exit_code=result.exit_code, output=result.output,
                            error=f"exit code {result.exit_code}")
        else:  # stopped past the drain grace: no report; the task's lease decides
            outcome = "abandoned"
        metrics.EXECUTIONS.labels(self.worker_id, outcome).inc()
        self.log.info("task finished", action="task_finished", task_id=task.task_id,
                      attempt=task.attempt, outcome=outcome, error=error,
                      exit_code=result.exit_code if result else None)
        self._finish(held)

    def _finish(self, held: Held) -> None:
        if self.held.pop(held.task.task_id, None) is not None:
            self.released_total += 1
        if not self.held:
            self._idle.set()

    async def wait_idle(self) -> None:
        while self.held:
            self._idle = trio.Event()
            await self._idle.wait()

    def abandon(self) -> None:
        """Stop whatever still runs (past the drain grace): no report, the leases decide."""
        for held in list(self.held.values()):
            held.scope.cancel()
