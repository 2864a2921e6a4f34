"""The outbox: task updates on their way to the coordinator, sent in batches, kept until
delivered.

    reporter    (serve_worker's nursery) waits for updates, gathers a batch — up to
                `report_batch`, or what came within `report_flush_s` — and sends it; while
                sending fails it keeps the batch and retries with backoff (tm.retry)

Invariants: updates reach the coordinator in the order they were queued, and each leaves
the outbox only once the coordinator has answered for it, so none is lost and none is
sent again after it was delivered. A result whose `started` update has not left yet
replaces it, carrying its time, so a fast task costs one update instead of two — never
once that `started` is in flight. A task whose result is still here counts as held for
the heartbeats (`results`): its lease must not lapse while the report waits out an outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NoReturn

import structlog
import trio

from tm import metrics
from tm.aio.grpc import CoordinatorPeer, RpcFailed
from tm.proto.gen.taskmaster import v1 as pb
from tm.retry import Backoff, retry_forever
from tm.settings import WorkerSettings

log = structlog.get_logger(__name__)

Kind = pb.UpdateKind


def _now_us() -> int:
    return time.time_ns() // 1000


def _merge(
    started: pb.TaskUpdate, kind: pb.UpdateKind, at_us: int, fields: dict[str, Any]
) -> None:
    """Turn an unsent `started` update into the task's result, keeping its start time."""
    started.started_at_us = started.at_us
    started.kind = kind
    started.at_us = at_us
    for name, value in fields.items():
        setattr(started, name, value)


class Outbox:
    def __init__(self, worker_id: str, settings: WorkerSettings) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.log = log.bind(worker_id=worker_id)
        self._updates: list[pb.TaskUpdate] = []
        # `started` updates still in the outbox and not in flight (see `add`).
        self._unsent_started: dict[str, pb.TaskUpdate] = {}
        self._ready = trio.Event()

    def __len__(self) -> int:
        return len(self._updates)

    def __repr__(self) -> str:
        return f"<Outbox {self.worker_id} [{len(self._updates)} updates waiting]>"

    def watch_metrics(self) -> None:
        metrics.REPORTS_PENDING.labels(self.worker_id).set_function(self.__len__)

    def add(self, task: pb.Task, kind: pb.UpdateKind, **fields: Any) -> None:
        """Queue an update. A result whose `started` update has not been sent yet replaces
        it (carrying its time), so a fast task costs one update, not two."""
        now = _now_us()
        started = self._unsent_started.pop(task.task_id, None)
        if kind != Kind.STARTED and started is not None and started.attempt == task.attempt:
            _merge(started, kind, now, fields)
        else:
            update = pb.TaskUpdate(task_id=task.task_id, attempt=task.attempt, kind=kind,
                                   at_us=now, **fields)
            self._updates.append(update)
            if kind == Kind.STARTED:
                self._unsent_started[task.task_id] = update
        self._ready.set()

    def results(self) -> Iterator[pb.TaskUpdate]:
        """The results (any update but `started`) not delivered yet."""
        return (u for u in self._updates if u.kind != Kind.STARTED)

    def wake(self) -> None:
        """Send what is waiting now (e.g. buffered while the coordinator was away)."""
        if self._updates:
            self._ready.set()

    async def serve_reporter(
        self, peer: CoordinatorPeer, capacity: Callable[[], pb.Capacity]
    ) -> NoReturn:
        """Send updates in batches, each with the worker's `capacity()` advert; keep them
        (in order) and retry while sending fails."""
        while True:
            await self._ready.wait()
            await retry_forever(
                partial(self._send_batch, peer, capacity), retry_on=RpcFailed,
                backoff=Backoff(base=0.1, cap=5.0), log=self.log,
                event="report failed; keeping it", action="report_retry",
            )

    async def _send_batch(
        self, peer: CoordinatorPeer, capacity: Callable[[], pb.Capacity]
    ) -> None:
        if len(self._updates) < self.settings.report_batch:
            await trio.sleep(self.settings.report_flush_s)  # gather a batch
        batch = self._updates[: self.settings.report_batch]
        self._ready = trio.Event()
        if not batch:
            return
        for update in batch:  # in flight from now on: no longer replaceable
            if update.kind == Kind.STARTED:
                self._unsent_started.pop(update.task_id, None)
        if len(self._updates) > len(batch):
            self._ready.set()
        await peer.report(
            pb.ReportRequest(worker_id=self.worker_id, updates=batch, capacity=capacity()),
            timeout=self.settings.rpc_timeout_s,
        )
        del self._updates[: len(batch)]

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for everything to be delivered; True if it was."""
        with trio.move_on_after(timeout):
            while self._updates:
                self._ready.set()
                await trio.sleep(0.01)
            return True
        return False
