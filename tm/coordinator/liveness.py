"""Liveness: which workers are alive, and what becomes of the tasks of those that are not.

    watch[worker]   one per registered worker (in serve_coordinator's nursery): its
                    heartbeat deadline as a cancel scope
    reaper          recovers tasks whose lease expired (their coordinator is gone)

A worker is alive while its link's `deadline` has not passed; its heartbeats and reports
`renew` it by the heartbeat timeout. When it passes, the worker is lost: it leaves the
registry (nothing more is pushed to it) and its unfinished tasks are recovered —
scheduled again, or failed when at-most-once or out of losses (tm.db) — retried while the
database is down. A link replaced by a new registration of the same worker is retired,
not lost: its tasks stay with the worker.

Leases are the backstop for tasks whose coordinator is gone (it crashed, or lost the
database): every heartbeat renews the leases of the tasks a worker holds, and the reaper
recovers tasks whose lease ran out. This module decides when a silent worker's tasks are
given up; nothing else recovers tasks.
"""

from __future__ import annotations

import contextlib
from typing import Any, NoReturn

import structlog
import trio

from tm import metrics
from tm.aio.pg import DatabaseUnavailable
from tm.coordinator.registry import WorkerLink
from tm.coordinator.state import Coordinator
from tm.db import recovery, workers
from tm.retry import Backoff, retry_forever

log = structlog.get_logger(__name__)


class Liveness:
    def __init__(self, coordinator: Coordinator, nursery: trio.Nursery) -> None:
        self.coordinator = coordinator
        self.settings = coordinator.settings
        self.log = log.bind(coordinator_id=coordinator.id)
        self._nursery = nursery

    def __repr__(self) -> str:
        return f"<Liveness {self.coordinator.id} [{len(self.coordinator.registry)} watched]>"

    def renew(self, link: WorkerLink) -> None:
        """The worker was heard from: it is alive for another heartbeat timeout."""
        link.deadline.deadline = trio.current_time() + self.settings.heartbeat_timeout_s

    def adopt(self, link: WorkerLink) -> None:
        """Register `link` and watch it; the link of the same worker it replaces retires."""
        old = self.coordinator.registry.add(link)
        if old is not None:
            old.retired = True
            old.deadline.cancel()
        self._nursery.start_soon(self._watch, link)

    async def _watch(self, link: WorkerLink) -> None:
        """Wait out the worker's heartbeat deadline; when it passes, the worker is lost."""
        try:
            with link.deadline:
                await trio.sleep_forever()
        finally:  # also when the coordinator stops: close the channel to the worker
            link.peer.close()
        if link.retired or not self.coordinator.registry.remove(link):
            return
        metrics.HEARTBEAT_MISSES.inc()
        with contextlib.suppress(KeyError):
            metrics.WORKER_FREE_SLOTS.remove(link.worker_id)
        self.log.warning(
            "worker lost",
            action="worker_lost",
            worker_id=link.worker_id,
            reason="heartbeat timeout",
        )
        await self._recover(link.worker_id)

    async def _recover(self, worker_id: str) -> None:
        """Give a lost worker's tasks back (or fail them); retried while the DB is down."""
        db = self.coordinator.db

        async def recover() -> list[Any]:
            rows = await recovery.recover_worker_tasks(db, worker_id)
            await workers.forget_worker(db, worker_id, self.coordinator.id)
            return rows

        rows = await retry_forever(
            recover, retry_on=DatabaseUnavailable, backoff=Backoff(base=0.5, cap=5.0),
            log=self.log, event="recovery postponed", action="recover_retry",
            worker_id=worker_id,
        )
        metrics.TASKS_RECOVERED.labels("worker_lost").inc(len(rows))
        for row in rows:
            self.log.info(
                "task recovered from lost worker",
                action="task_recovered",
                task_id=str(row["task_id"]),
                worker_id=worker_id,
                status=row["status"],
            )
        if rows:
            self.coordinator.waker.wake()

    async def reap_forever(self) -> NoReturn:
        """Backstop: tasks whose lease expired (owner's coordinator gone) are recovered.

        Leases of live workers may also lapse while the database is down, since their
        renewals cannot be written. So after any database failure the reaper waits until
        the database has been reachable for two heartbeat timeouts — long enough for every
        live worker's heartbeats to renew its leases — before it reaps again.
        """
        db = self.coordinator.db
        interval = max(0.5, min(self.settings.lease_s / 4, 5.0))
        settle = 2 * self.settings.heartbeat_timeout_s
        healthy_since = trio.current_time()
        while True:
            await trio.sleep(interval)
            if trio.current_time() - healthy_since < settle:
                try:
                    await db.ping()
                except DatabaseUnavailable:
                    healthy_since = trio.current_time()
                continue
            try:
                rows = await recovery.recover_expired_leases(db)
                await workers.forget_silent_workers(db, 3 * self.settings.heartbeat_timeout_s)
            except DatabaseUnavailable as exc:
                healthy_since = trio.current_time()
                self.log.warning("lease reaper skipped a round", action="reap_retry",
                                 error=str(exc))
                continue
            metrics.TASKS_RECOVERED.labels("lease_expired").inc(len(rows))
            for row in rows:
                self.log.warning("lease expired, task recovered", action="lease_expired",
                                 task_id=str(row["task_id"]), status=row["status"])
            if rows:
                self.coordinator.waker.wake()
