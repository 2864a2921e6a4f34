"""The notification follower: LISTEN tm_due wakes the dispatcher, LISTEN tm_cancel relays
cancels to the workers holding the tasks (channels and payloads: tm/db/notify.py).

    notifications   one connection listening on both channels; reconnects with backoff
    cancel[task]    one short call per cancel relayed (serve_coordinator's nursery)

Notifications only make things faster, never correct: a lost NOTIFY is caught by the
dispatcher's backstop scan, and every (re)connection wakes the dispatcher for whatever
happened while nobody listened. A cancel reaches the worker only if this coordinator
holds that worker's link; the task's row is already `cancelled` (tm.db.tasks), so a cancel
not delivered still ends in that state — its worker's late report is stale.
"""

from __future__ import annotations

from typing import NoReturn

import structlog
import trio

from tm.aio.grpc import RpcFailed
from tm.aio.pg import DatabaseUnavailable
from tm.coordinator.registry import WorkerLink
from tm.coordinator.state import Coordinator
from tm.db import notify
from tm.proto.gen.taskmaster import v1 as pb
from tm.retry import Backoff, retry_forever

log = structlog.get_logger(__name__)


class Notifications:
    def __init__(self, coordinator: Coordinator, nursery: trio.Nursery) -> None:
        self.coordinator = coordinator
        self.log = log.bind(coordinator_id=coordinator.id)
        self._nursery = nursery
        self._backoff = Backoff(base=0.2, cap=5.0)

    def __repr__(self) -> str:
        return f"<Notifications {self.coordinator.id} {self._backoff!r}>"

    async def follow_forever(self) -> NoReturn:
        """Listen for notifications until cancelled, reconnecting while the database is
        away."""
        await retry_forever(
            self._follow, retry_on=DatabaseUnavailable, backoff=self._backoff, log=self.log,
            event="not listening for notifications", action="notify_listen_retry",
        )

    async def _follow(self) -> NoReturn:
        db = self.coordinator.db
        async with db.listen(notify.DUE) as due, db.listen(notify.CANCEL) as cancels:
            self._backoff.reset()
            self.coordinator.waker.wake()  # anything that happened while not listening
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._on_due, due, nursery.cancel_scope)
                nursery.start_soon(self._on_cancel, cancels, nursery.cancel_scope)
        raise DatabaseUnavailable("notification connection lost")

    async def _on_due(
        self, channel: trio.MemoryReceiveChannel[str], scope: trio.CancelScope
    ) -> None:
        async for _payload in channel:
            self.coordinator.waker.wake()
        scope.cancel()  # connection lost: reconnect

    async def _on_cancel(
        self, channel: trio.MemoryReceiveChannel[str], scope: trio.CancelScope
    ) -> None:
        async for payload in channel:
            try:
                notice = notify.CancelNotice.decode(payload)
            except ValueError as exc:
                self.log.warning("malformed cancel notice", action="cancel_notice_malformed",
                                 error=str(exc))
                continue
            link = self.coordinator.registry.get(notice.worker_id)
            if link is not None:
                self._nursery.start_soon(
                    self._cancel_on_worker, link, str(notice.task_id), notice.attempt)
        scope.cancel()

    async def _cancel_on_worker(self, link: WorkerLink, task_id: str, attempt: int) -> None:
        try:
            await link.peer.cancel(
                pb.CancelRequest(task_id=task_id, attempt=attempt),
                timeout=self.coordinator.settings.push_timeout_s,
            )
            self.log.info(
                "cancel sent to worker",
                action="cancel_sent",
                task_id=task_id,
                worker_id=link.worker_id,
                attempt=attempt,
            )
        except RpcFailed as exc:
            self.log.warning(
                "cancel not delivered",
                action="cancel_failed",
                task_id=task_id,
                worker_id=link.worker_id,
                error=str(exc),
            )
