"""The session with the coordinator: register, then heartbeat; on any failure register
again with backoff, forever (a worker never gives up on its coordinator).

    session    (serve_worker's nursery) one registration and its heartbeats at a time

Registering and every heartbeat carry the worker's capacity advert and the tasks it holds
— including finished ones whose result is still in the outbox — which renews their leases
(tm.worker.execution.held_messages). A coordinator that answers "unknown" (it restarted,
or declared this worker lost) gets a new registration at once; an unreachable one is
retried with backoff that starts again from its base after each registration. After
registering, whatever the outbox buffered meanwhile is sent at once. `heartbeat_now` cuts
the wait short, so that the coordinator hears of a drain without delay.
"""

from __future__ import annotations

from typing import NoReturn

import structlog
import trio

from tm.aio.grpc import CoordinatorPeer, RpcFailed
from tm.proto.gen.taskmaster import v1 as pb
from tm.retry import Backoff, retry_forever
from tm.settings import WorkerSettings
from tm.worker.execution import Execution
from tm.worker.outbox import Outbox

log = structlog.get_logger(__name__)


class Session:
    def __init__(
        self, worker_id: str, settings: WorkerSettings, execution: Execution, outbox: Outbox
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.execution = execution
        self.outbox = outbox
        self.log = log.bind(worker_id=worker_id)
        self._backoff = Backoff(base=0.1, cap=5.0)
        self._heartbeat_now = trio.Event()

    def __repr__(self) -> str:
        return f"<Session {self.worker_id} {self._backoff!r}>"

    def heartbeat_now(self) -> None:
        self._heartbeat_now.set()

    async def serve(self, peer: CoordinatorPeer, address: str) -> NoReturn:
        """Register (advertising `address`) and heartbeat until cancelled."""
        while True:
            await retry_forever(
                lambda: self._session(peer, address), retry_on=RpcFailed,
                backoff=self._backoff, log=self.log, event="coordinator unreachable",
                action="coordinator_retry",
            )

    async def _session(self, peer: CoordinatorPeer, address: str) -> None:
        """One registration and its heartbeats; returns when the coordinator forgot us."""
        interval = await self._register(peer, address)
        self._backoff.reset()
        while True:
            with trio.move_on_after(interval):
                await self._heartbeat_now.wait()
            self._heartbeat_now = trio.Event()
            response = await peer.heartbeat(
                pb.HeartbeatRequest(
                    worker_id=self.worker_id,
                    capacity=self.execution.capacity_message(),
                    held=self.execution.held_messages(),
                ),
                timeout=self.settings.rpc_timeout_s,
            )
            if not response.known:
                self.log.info("coordinator forgot us; registering again", action="reregister")
                return

    async def _register(self, peer: CoordinatorPeer, address: str) -> float:
        response = await peer.register(
            pb.RegisterRequest(
                worker_id=self.worker_id,
                address=address,
                capacity=self.execution.capacity_message(),
                held=self.execution.held_messages(),
                concurrency=self.settings.concurrency,
            ),
            timeout=self.settings.rpc_timeout_s,
        )
        self.log.info(
            "registered",
            action="registered_with_coordinator",
            coordinator_id=response.coordinator_id,
            address=address,
        )
        self.outbox.wake()  # deliver anything buffered while away
        return max(0.05, response.heartbeat_interval_ms / 1000 or 1.0)
