"""The outbox: task updates on their way to the coordinator, sent in batches, kept until
delivered.

    reporter    (serve_worker's nursery) waits for updates, gathers a batch — up to
                `report_batch`, or what came within `report_flush_s` — and sends it; while
                sending fails it keeps the batch and retries with backoff (tm.retry)

Invariants: updates reach the coordinator in the order they were queued, and each leaves
the outbox only once the coordinator has answered for it, so none is lost and none is
sent again after it was delivered. A result whose `started` update has not left yet
replaces it, carrying its time (tm.core.reports.merge, the rule the report statement
applies per batch too), so a fast task costs one update instead of two — never once that
`started` is in flight. Updates wait here as core Reports and become messages as they go
(tm.wire). A task whose result is still here counts as held for
the heartbeats (`results`): its lease must not lapse while the report waits out an outage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn

import structlog
import trio

from tm import metrics, wire
from tm.aio.grpc import CoordinatorPeer, RpcFailed
from tm.core.reports import Report, merge
from tm.core.reports import ReportKind as Kind
from tm.proto.gen.taskmaster import v1 as pb
from tm.retry import Backoff, retry_forever
from tm.settings import WorkerSettings

log = structlog.get_logger(__name__)

class Outbox:
    def __init__(self, worker_id: str, settings: WorkerSettings) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.log = log.bind(worker_id=worker_id)
        self._updates: list[Report[str]] = []
        # Updates delivered so far, i.e. removed from the front of `_updates`.
        self._delivered = 0
        # `started` updates still in the outbox and not in flight, by task id: where they
        # are, counted from the first update ever queued (see `add`).
        self._unsent_started: dict[str, int] = {}
        self._ready = trio.Event()

    def __len__(self) -> int:
        return len(self._updates)

    def __repr__(self) -> str:
        return f"<Outbox {self.worker_id} [{len(self._updates)} updates waiting]>"

    def watch_metrics(self) -> None:
        metrics.REPORTS_PENDING.labels(self.worker_id).set_function(self.__len__)

    def add(self, task: pb.Task, kind: Kind, **fields: Any) -> None:
        """Queue an update. A result whose `started` update has not been sent yet replaces
        it (carrying its time), so a fast task costs one update, not two."""
        report = Report(task.task_id, task.attempt, kind, datetime.now(UTC), **fields)
        started = self._unsent_started.pop(task.task_id, None)
        if kind is not Kind.STARTED and started is not None:
            index = started - self._delivered
            if self._updates[index].attempt == task.attempt:
                self._updates[index] = merge(self._updates[index], report)
                self._ready.set()
                return
        self._updates.append(report)
        if kind is Kind.STARTED:
            self._unsent_started[task.task_id] = self._delivered + len(self._updates) - 1
        self._ready.set()

    def results(self) -> Iterator[Report[str]]:
        """The results (any update but `started`) not delivered yet."""
        return (u for u in self._updates if u.kind is not Kind.STARTED)

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
            if update.kind is Kind.STARTED:
                self._unsent_started.pop(update.task_id, None)
        if len(self._updates) > len(batch):
            self._ready.set()
        await peer.report(
            pb.ReportRequest(worker_id=self.worker_id,
                             updates=[wire.to_update(update) for update in batch],
                             capacity=capacity()),
            timeout=self.settings.rpc_timeout_s,
        )
        del self._updates[: len(batch)]
        self._delivered += len(batch)

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for everything to be delivered; True if it was."""
        with trio.move_on_after(timeout):
            while self._updates:
                self._ready.set()
                await trio.sleep(0.01)
            return True
        return False
