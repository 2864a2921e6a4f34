"""The CoordinatorService handlers: register, heartbeat, report (trio side of the bridge).

Every request is checked before it touches anything: a bad worker id, address or capacity
is refused with INVALID_ARGUMENT; a malformed held task or task update is dropped (logged)
and the rest of the request still counts. A database outage answers UNAVAILABLE, so the
worker keeps its reports and tries again — except for heartbeats, which are answered in
time whatever the database does (a live worker must not be lost because PostgreSQL is).

A request from a worker renews its liveness (tm.coordinator.liveness) and applies its
capacity advert to its credit before anything else, so the dispatcher never plans with
an advert older than the one in hand; a report that may have made tasks due (retries,
returned tasks) wakes the dispatcher.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from ssl import SSLContext

import structlog
import trio

from tm import metrics, wire
from tm.aio.grpc import Code, RpcError, WorkerPeer, connect_peer
from tm.aio.pg import DatabaseUnavailable
from tm.coordinator.liveness import Liveness
from tm.coordinator.registry import WorkerLink, advertised
from tm.coordinator.state import Coordinator
from tm.core.addresses import split_address
from tm.core.dispatch import Credit
from tm.core.reports import Report, ReportKind
from tm.db import reports as db_reports
from tm.db import workers
from tm.proto.gen.taskmaster import v1 as pb

log = structlog.get_logger(__name__)

MAX_WORKER_ID = 200


def _check_worker_id(worker_id: str) -> None:
    if not worker_id or len(worker_id) > MAX_WORKER_ID or not worker_id.isprintable():
        raise RpcError(Code.INVALID_ARGUMENT, "worker_id must be 1-200 printable characters")


class CoordinatorService:
    """Served over gRPC by tm.coordinator.service (see tm.aio.grpc.CoordinatorHandlers)."""

    def __init__(
        self, coordinator: Coordinator, liveness: Liveness, client_tls: SSLContext | None
    ) -> None:
        self.coordinator = coordinator
        self.settings = coordinator.settings
        self.registry = coordinator.registry
        self.liveness = liveness
        self.log = log.bind(coordinator_id=coordinator.id)
        self._client_tls = client_tls

    def __repr__(self) -> str:
        return f"<CoordinatorService {self.coordinator.id} {self.registry!r}>"

    async def register(self, request: pb.RegisterRequest) -> pb.RegisterResponse:
        _check_worker_id(request.worker_id)
        try:
            split_address(request.address)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        capacity = request.capacity or pb.Capacity()
        if capacity.capacity < 1:
            raise RpcError(Code.INVALID_ARGUMENT, "capacity must be at least 1")
        credit = advertised(Credit(request.worker_id, capacity.capacity, 0), capacity)
        link = WorkerLink(
            worker_id=request.worker_id,
            address=request.address,
            peer=connect_peer(WorkerPeer, request.address, self._client_tls),
            credit=credit,
            concurrency=request.concurrency,
        )
        self.liveness.renew(link)
        await self._record(link, self._held(request.worker_id, request.held))
        self.liveness.adopt(link)
        metrics.WORKER_FREE_SLOTS.labels(link.worker_id).set(credit.available)
        self.log.info(
            "worker registered",
            action="worker_registered",
            worker_id=link.worker_id,
            address=link.address,
            capacity=credit.capacity,
            free_slots=credit.free_slots,
            held=len(request.held),
        )
        self.coordinator.waker.wake()
        return pb.RegisterResponse(
            coordinator_id=self.coordinator.id,
            heartbeat_interval_ms=int(self.settings.heartbeat_interval_s * 1000),
            heartbeat_timeout_ms=int(self.settings.heartbeat_timeout_s * 1000),
        )

    async def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        _check_worker_id(request.worker_id)
        link = self.registry.get(request.worker_id)
        if link is None:
            return pb.HeartbeatResponse(known=False)
        self._heard_from(link, request.capacity)
        # The worker is alive, whatever the database says: keep it, and answer in time even
        # while the database hangs (a late answer would make the worker re-register, and
        # be lost meanwhile). Its leases are renewed by the next heartbeat that gets
        # through (see tm.coordinator.liveness).
        recorded = False
        with trio.move_on_after(min(2.0, self.settings.heartbeat_timeout_s / 2)):
            try:
                await self._record(link, self._held(request.worker_id, request.held))
                recorded = True
            except RpcError:
                pass
        if not recorded:
            self.log.warning("heartbeat not recorded", action="heartbeat_unrecorded",
                             worker_id=link.worker_id)
        return pb.HeartbeatResponse(known=True)

    async def report(self, request: pb.ReportRequest) -> pb.ReportResponse:
        _check_worker_id(request.worker_id)
        reports = self._reports(request.worker_id, request.updates)
        # The worker's state first: a draining worker's returned tasks must not be pushed
        # straight back to it once they are scheduled again.
        link = self.registry.get(request.worker_id)
        if link is not None:
            self._heard_from(link, request.capacity)
        try:
            applied, stale = await db_reports.apply_reports(
                self.coordinator.db,
                reports,
                retry_base_s=self.settings.retry_base_s,
                retry_cap_s=self.settings.retry_cap_s,
            )
        except DatabaseUnavailable as exc:
            raise RpcError(Code.UNAVAILABLE, str(exc)) from None  # the worker keeps them
        for task_id in stale:
            self.log.info(
                "stale report ignored",
                action="stale_report",
                task_id=str(task_id),
                worker_id=request.worker_id,
            )
        metrics.STALE_REPORTS.inc(len(stale))
        if any(r.kind in (ReportKind.FAILED, ReportKind.RETURNED) for r in reports):
            self.coordinator.waker.wake()  # retries and returned tasks may be due now
        return pb.ReportResponse(applied=applied, stale=len(stale), known=link is not None)

    def _reports(
        self, worker_id: str, updates: Sequence[pb.TaskUpdate]
    ) -> list[Report[uuid.UUID]]:
        """The well-formed updates as reports; the others are logged and dropped."""
        reports = []
        for update in updates:
            try:
                reports.append(wire.from_update(update, jitter=random.random()))
            except wire.BadTaskId:
                self.log.warning(
                    "malformed task id in report",
                    action="report_task_id_malformed",
                    worker_id=worker_id,
                    task_id=update.task_id[:64],
                )
            except wire.BadUpdate as exc:
                self.log.warning(
                    "malformed task update",
                    action="report_update_malformed",
                    worker_id=worker_id,
                    task_id=update.task_id,
                    kind=int(update.kind),
                    error=str(exc),
                )
        return reports

    def _heard_from(self, link: WorkerLink, capacity: pb.Capacity | None) -> None:
        self.liveness.renew(link)
        if link.advertise(capacity):
            self.coordinator.waker.wake()

    def _held(
        self, worker_id: str, items: Sequence[pb.HeldTask]
    ) -> list[tuple[uuid.UUID, int]]:
        held = []
        for item in items:
            try:
                held.append((uuid.UUID(item.task_id), item.attempt))
            except ValueError:
                self.log.warning("malformed held task id", action="held_task_malformed",
                                 worker_id=worker_id, task_id=item.task_id[:64])
        return held

    async def _record(self, link: WorkerLink, held: list[tuple[uuid.UUID, int]]) -> None:
        record = workers.WorkerRecord(
            worker_id=link.worker_id,
            address=link.address,
            draining=link.credit.draining,
            capacity=link.credit.capacity,
            free_slots=link.credit.available,
            held=held,
        )
        try:
            await workers.record_heartbeat(
                self.coordinator.db, record, self.coordinator.id, self.settings.lease_s
            )
        except DatabaseUnavailable as exc:
            raise RpcError(Code.UNAVAILABLE, str(exc)) from None
