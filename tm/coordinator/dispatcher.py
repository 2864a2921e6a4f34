"""The dispatcher: claims due tasks for the workers' credit, pushes them after commit.

    dispatcher      sleeps until the next due time, a wake (NOTIFY tm_due, new credit, a
                    task handed back) or the backstop scan; then one round
    push[batch]     one short task per batch pushed to a worker (serve_coordinator's nursery)
    undo[batch]     hands back tasks that could not be pushed

A round plans who gets how many (tm.core.dispatch.plan, rotating among equals), claims
that many due tasks in one statement (tm.db: FOR UPDATE SKIP LOCKED, never before
`scheduled_at`), reserves the credit and pushes each worker its batch once the claim has
committed: no database lock is held while talking to a worker, and a worker is never
pushed more than its credit. A push that certainly did not arrive (refused, UNAVAILABLE)
or was rejected is handed back for re-dispatch at once; one that may have arrived is left
to the worker's heartbeats and the lease rather than pushed twice. A worker whose pushes
fail gets nothing for a capped, jittered backoff.
"""

from __future__ import annotations

import random
from typing import NoReturn

import structlog
import trio

from tm import metrics
from tm.aio.grpc import RpcFailed
from tm.aio.pg import DatabaseUnavailable
from tm.coordinator.registry import WorkerLink
from tm.coordinator.rounds import run_rounds
from tm.coordinator.state import Coordinator
from tm.core import dispatch
from tm.core.backoff import exponential
from tm.core.timefmt import to_micros
from tm.db import dispatch as db_dispatch
from tm.proto.gen.taskmaster import v1 as pb

log = structlog.get_logger(__name__)


class Dispatcher:
    def __init__(self, coordinator: Coordinator, nursery: trio.Nursery) -> None:
        self.coordinator = coordinator
        self.settings = coordinator.settings
        self.db = coordinator.db
        self.registry = coordinator.registry
        self.log = log.bind(coordinator_id=coordinator.id)
        self._nursery = nursery
        self._rotation = 0

    def __repr__(self) -> str:
        return f"<Dispatcher {self.coordinator.id} rounds={self._rotation} {self.registry!r}>"

    async def dispatch_forever(self) -> NoReturn:
        await run_rounds(self._round, self.coordinator.waker, log=self.log,
                         paused="dispatch paused", action="dispatch_retry")

    async def _round(self) -> float:
        """Claim and push one round; returns how long to sleep (0: go again at once)."""
        now = trio.current_time()
        credits = self.registry.credits(now)
        total = sum(c.available for c in credits)
        if total == 0:
            return self._backoff_wait(now)
        self._rotation += 1
        slots = dispatch.plan(credits, min(total, self.settings.max_claim), rotation=self._rotation)
        claimed = await db_dispatch.claim(
            self.db, slots, self.coordinator.id, self.settings.lease_s)
        if claimed:
            self._push_all(claimed)
            metrics.CLAIM_BATCH.observe(len(claimed))
            for task in claimed:
                metrics.DISPATCH_LATENCY.observe(
                    max(0.0, (task.picked_at - task.scheduled_at).total_seconds()))
        if len(claimed) == len(slots):
            return 0.0
        due_in = await db_dispatch.seconds_until_due(self.db)
        if due_in is None:
            return self.settings.scan_interval_s
        return min(self.settings.scan_interval_s, max(0.0, due_in))

    def _backoff_wait(self, now: float) -> float:
        resume = [
            link.resume_at - now
            for link in self.registry.links()
            if link.push_failures and link.resume_at > now
        ]
        return min([self.settings.scan_interval_s, *resume])

    def _push_all(self, claimed: list[db_dispatch.Claimed]) -> None:
        batches: dict[str, list[db_dispatch.Claimed]] = {}
        for task in claimed:
            batches.setdefault(task.worker_id, []).append(task)
        for worker_id, tasks in batches.items():
            link = self.registry.get(worker_id)
            if link is None:  # gone between plan and claim: hand the tasks back
                self._nursery.start_soon(self._undo, worker_id, tasks)
                continue
            # Credit can shrink between plan and claim (a report or heartbeat arrived):
            # push only what it allows now and hand the rest back.
            fits = min(len(tasks), link.credit.available)
            if fits < len(tasks):
                self._nursery.start_soon(self._undo, worker_id, tasks[fits:])
            if fits:
                link.credit = dispatch.reserve(link.credit, fits)
                self._nursery.start_soon(self._push, link, tasks[:fits])
        metrics.DISPATCHED.inc(len(claimed))

    async def _push(self, link: WorkerLink, tasks: list[db_dispatch.Claimed]) -> None:
        request = pb.PushRequest(
            coordinator_id=self.coordinator.id,
            tasks=[
                pb.Task(
                    task_id=str(t.task_id),
                    command=t.command,
                    attempt=t.attempt,
                    scheduled_at_us=to_micros(t.scheduled_at),
                    timeout_s=t.timeout_s or 0.0,
                )
                for t in tasks
            ],
        )
        try:
            response = await link.peer.push(request, timeout=self.settings.push_timeout_s)
        except RpcFailed as exc:
            metrics.PUSH_FAILURES.inc()
            link.credit = dispatch.release(link.credit, len(tasks))
            link.push_failures += 1
            link.resume_at = trio.current_time() + exponential(
                link.push_failures, base=0.1, cap=5.0, jitter=random.random()
            )
            self.log.warning(
                "push failed",
                action="push_failed",
                worker_id=link.worker_id,
                tasks=len(tasks),
                delivered=exc.delivered,
                error=str(exc),
            )
            if exc.delivered is False:
                await self._undo(link.worker_id, tasks)
            # Otherwise the worker may hold them: its heartbeats will renew their leases,
            # or, if it never got them, lease expiry recovers them (fenced by attempt).
            self.coordinator.waker.wake()
            return
        link.push_failures = 0
        rejected = set(response.rejected)
        if rejected:
            link.credit = dispatch.release(link.credit, len(rejected))
            await self._undo(link.worker_id, [t for t in tasks if str(t.task_id) in rejected])
        if link.advertise(response.capacity):
            self.coordinator.waker.wake()
        self.log.debug(
            "pushed",
            action="tasks_pushed",
            worker_id=link.worker_id,
            accepted=len(response.accepted),
            rejected=len(rejected),
        )

    async def _undo(self, worker_id: str, tasks: list[db_dispatch.Claimed]) -> None:
        try:
            count = await db_dispatch.undo_push(self.db, [(t.task_id, t.attempt) for t in tasks])
        except DatabaseUnavailable as exc:
            self.log.warning(
                "could not hand back tasks; their leases will",
                action="undo_failed",
                worker_id=worker_id,
                tasks=len(tasks),
                error=str(exc),
            )
            return
        self.log.info(
            "tasks handed back for re-dispatch",
            action="push_undone",
            worker_id=worker_id,
            tasks=count,
        )
        self.coordinator.waker.wake()
