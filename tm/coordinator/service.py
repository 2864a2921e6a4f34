"""`serve_coordinator`: registers workers, dispatches due tasks to them, recovers lost ones.

The nursery tree:

    serve_coordinator
    ├── gRPC server (CoordinatorService: register, heartbeat, report)
    ├── dispatcher      sleeps until the next due time, a NOTIFY tm_due, new credit or the
    │                   backstop scan; claims (one statement), then pushes after commit
    ├── pushes          one short task per batch pushed to a worker
    ├── watch[worker]   one per worker: its heartbeat deadline as a cancel scope
    ├── reaper          recovers tasks whose lease expired (their coordinator is gone)
    ├── cancel relay    LISTEN tm_cancel: stops cancelled tasks on the worker holding them
    └── recurring       creates the tasks of recurring schedules' occurrences
                        (tm.coordinator.recurring)

Invariants: no database lock is held while talking to a worker; a worker is never pushed
more tasks than its credit (tm.core.dispatch); a task that was not certainly delivered is
left to heartbeats and leases rather than pushed twice blindly.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

import structlog
import trio

from tm import metrics, tls
from tm.aio.grpc import Code, RpcError, RpcFailed, bridge, connect_peer, serve_grpc
from tm.aio.pg import Database, DatabaseUnavailable, open_database
from tm.coordinator.recurring import serve_recurring
from tm.coordinator.registry import Registry, WorkerLink
from tm.coordinator.rounds import Waker, run_rounds
from tm.core import dispatch
from tm.core.addresses import split_address
from tm.core.backoff import exponential
from tm.core.dispatch import Credit
from tm.core.timefmt import from_micros, to_micros
from tm.db import queries
from tm.db.migrate import migrate
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import CoordinatorSettings

log = structlog.get_logger("tm.coordinator")

MAX_WORKER_ID = 200


def _held(items: Sequence[pb.HeldTask]) -> list[tuple[uuid.UUID, int]]:
    held = []
    for item in items:
        try:
            held.append((uuid.UUID(item.task_id), item.attempt))
        except ValueError:
            log.warning("malformed held task id", action="bad_input", task_id=item.task_id[:64])
    return held


class Coordinator:
    """The state and handlers of one coordinator process (trio side)."""

    def __init__(self, settings: CoordinatorSettings, db: Database, nursery: trio.Nursery):
        self.settings = settings
        self.db = db
        self.id = f"c-{uuid.uuid4().hex[:10]}"
        self.registry = Registry()
        self._nursery = nursery
        self._client_tls = tls.client_context(settings.tls) if settings.tls else None
        self._waker = Waker()
        self._rotation = 0

    def __repr__(self) -> str:
        return f"<Coordinator {self.id} {self.registry!r}>"

    def wake(self) -> None:
        self._waker.wake()

    # ------------------------------------------------------------------ gRPC handlers

    def _check_worker_id(self, worker_id: str) -> None:
        if not worker_id or len(worker_id) > MAX_WORKER_ID or not worker_id.isprintable():
            raise RpcError(Code.INVALID_ARGUMENT, "worker_id must be 1-200 printable characters")

    async def register(self, request: pb.RegisterRequest) -> pb.RegisterResponse:
        self._check_worker_id(request.worker_id)
        try:
            split_address(request.address)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        capacity = request.capacity or pb.Capacity()
        if capacity.capacity < 1:
            raise RpcError(Code.INVALID_ARGUMENT, "capacity must be at least 1")
        credit = Credit(request.worker_id, capacity.capacity, 0)
        credit = dispatch.advertise(
            credit,
            capacity=capacity.capacity,
            free_slots=capacity.free_slots,
            accepted_total=capacity.accepted_total,
            draining=capacity.draining,
            released_total=capacity.released_total,
        )
        link = WorkerLink(
            worker_id=request.worker_id,
            address=request.address,
            peer=connect_peer(pb.WorkerServiceStub, request.address, self._client_tls),
            credit=credit,
            concurrency=request.concurrency,
        )
        link.deadline.deadline = trio.current_time() + self.settings.heartbeat_timeout_s
        await self._record(link, _held(request.held))
        old = self.registry.add(link)
        if old is not None:
            old.retired = True
            old.deadline.cancel()
        metrics.WORKER_FREE_SLOTS.labels(link.worker_id).set(credit.available)
        self._nursery.start_soon(self._watch, link)
        log.info(
            "worker registered",
            action="worker_registered",
            worker_id=link.worker_id,
            address=link.address,
            capacity=credit.capacity,
            free_slots=credit.free_slots,
            held=len(request.held),
        )
        self.wake()
        return pb.RegisterResponse(
            coordinator_id=self.id,
            heartbeat_interval_ms=int(self.settings.heartbeat_interval_s * 1000),
            heartbeat_timeout_ms=int(self.settings.heartbeat_timeout_s * 1000),
        )

    async def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        self._check_worker_id(request.worker_id)
        link = self.registry.get(request.worker_id)
        if link is None:
            return pb.HeartbeatResponse(known=False)
        link.deadline.deadline = trio.current_time() + self.settings.heartbeat_timeout_s
        self._advertise(link, request.capacity)
        # The worker is alive, whatever the database says: keep it, and answer in time even
        # while the database hangs (a late answer would make the worker re-register, and
        # be lost meanwhile). Its leases are renewed by the next heartbeat that gets
        # through (see `reap`).
        recorded = False
        with trio.move_on_after(min(2.0, self.settings.heartbeat_timeout_s / 2)):
            try:
                await self._record(link, _held(request.held))
                recorded = True
            except RpcError:
                pass
        if not recorded:
            log.warning("heartbeat not recorded", action="heartbeat_unrecorded",
                        worker_id=link.worker_id)
        return pb.HeartbeatResponse(known=True)

    async def report(self, request: pb.ReportRequest) -> pb.ReportResponse:
        self._check_worker_id(request.worker_id)
        reports = []
        for update in request.updates:
            try:
                task_id = uuid.UUID(update.task_id)
            except ValueError:
                log.warning(
                    "malformed task id in report",
                    action="bad_input",
                    worker_id=request.worker_id,
                    task_id=update.task_id[:64],
                )
                continue
            kind = int(update.kind)
            if not queries.STARTED <= kind <= queries.RETURNED or update.attempt < 1:
                log.warning(
                    "malformed task update",
                    action="bad_input",
                    worker_id=request.worker_id,
                    task_id=update.task_id,
                    kind=kind,
                )
                continue
            reports.append(
                queries.Report(
                    task_id=task_id,
                    attempt=update.attempt,
                    kind=kind,
                    at=_time(update.at_us),
                    started_at=_time(update.started_at_us) if update.started_at_us > 0 else None,
                    exit_code=update.exit_code,
                    output=update.output.replace("\x00", "") or None,
                    error=update.error.replace("\x00", "") or None,
                    jitter=random.random(),
                )
            )
        # The worker's state first: a draining worker's returned tasks must not be pushed
        # straight back to it once they are scheduled again.
        link = self.registry.get(request.worker_id)
        if link is not None:
            link.deadline.deadline = trio.current_time() + self.settings.heartbeat_timeout_s
            self._advertise(link, request.capacity)
        try:
            applied, stale = await queries.apply_reports(
                self.db,
                reports,
                retry_base_s=self.settings.retry_base_s,
                retry_cap_s=self.settings.retry_cap_s,
            )
        except DatabaseUnavailable as exc:
            raise RpcError(Code.UNAVAILABLE, str(exc)) from None  # the worker keeps them
        for task_id in stale:
            log.info(
                "stale report ignored",
                action="stale_report",
                task_id=str(task_id),
                worker_id=request.worker_id,
            )
        metrics.STALE_REPORTS.inc(len(stale))
        if any(r.kind in (queries.FAILED, queries.RETURNED) for r in reports):
            self.wake()  # retries and returned tasks may be due now
        return pb.ReportResponse(applied=applied, stale=len(stale), known=link is not None)

    def _advertise(self, link: WorkerLink, capacity: pb.Capacity | None) -> None:
        if capacity is None or capacity.capacity < 1:
            return
        before = link.credit.available
        link.credit = dispatch.advertise(
            link.credit,
            capacity=capacity.capacity,
            free_slots=capacity.free_slots,
            accepted_total=capacity.accepted_total,
            draining=capacity.draining,
            released_total=capacity.released_total,
        )
        metrics.WORKER_FREE_SLOTS.labels(link.worker_id).set(link.credit.available)
        if link.credit.available > before:
            self.wake()

    async def _record(self, link: WorkerLink, held: list[tuple[uuid.UUID, int]]) -> None:
        record = queries.WorkerRecord(
            worker_id=link.worker_id,
            address=link.address,
            draining=link.credit.draining,
            capacity=link.credit.capacity,
            free_slots=link.credit.available,
            held=held,
        )
        try:
            await queries.record_heartbeat(self.db, record, self.id, self.settings.lease_s)
        except DatabaseUnavailable as exc:
            raise RpcError(Code.UNAVAILABLE, str(exc)) from None

    # ------------------------------------------------------------------ liveness

    async def _watch(self, link: WorkerLink) -> None:
        """Wait out the worker's heartbeat deadline; when it passes, the worker is lost."""
        try:
            with link.deadline:
                await trio.sleep_forever()
        finally:  # also when the coordinator stops: close the channel to the worker
            link.peer.close()
        if link.retired or not self.registry.remove(link):
            return
        metrics.HEARTBEAT_MISSES.inc()
        with contextlib.suppress(KeyError):
            metrics.WORKER_FREE_SLOTS.remove(link.worker_id)
        log.warning(
            "worker lost",
            action="worker_lost",
            worker_id=link.worker_id,
            reason="heartbeat timeout",
        )
        await self._recover(link.worker_id)

    async def _recover(self, worker_id: str) -> None:
        """Give a lost worker's tasks back (or fail them); retried while the DB is down."""
        tries = 0
        while True:
            try:
                rows = await queries.recover_worker_tasks(self.db, worker_id)
                await queries.forget_worker(self.db, worker_id, self.id)
                break
            except DatabaseUnavailable as exc:
                tries += 1
                log.warning(
                    "recovery postponed",
                    action="recover_retry",
                    worker_id=worker_id,
                    error=str(exc),
                )
                await trio.sleep(exponential(tries, base=0.5, cap=5.0, jitter=random.random()))
        metrics.TASKS_RECOVERED.labels("worker_lost").inc(len(rows))
        for row in rows:
            log.info(
                "task recovered from lost worker",
                action="task_recovered",
                task_id=str(row["task_id"]),
                worker_id=worker_id,
                status=row["status"],
            )
        if rows:
            self.wake()

    async def reap(self) -> None:
        """Backstop: tasks whose lease expired (owner's coordinator gone) are recovered.

        Leases of live workers may also lapse while the database is down, since their
        renewals cannot be written. So after any database failure the reaper waits until
        the database has been reachable for two heartbeat timeouts — long enough for every
        live worker's heartbeats to renew its leases — before it reaps again.
        """
        interval = max(0.5, min(self.settings.lease_s / 4, 5.0))
        settle = 2 * self.settings.heartbeat_timeout_s
        healthy_since = trio.current_time()
        while True:
            await trio.sleep(interval)
            if trio.current_time() - healthy_since < settle:
                try:
                    await self.db.ping()
                except DatabaseUnavailable:
                    healthy_since = trio.current_time()
                continue
            try:
                rows = await queries.recover_expired_leases(self.db)
                await queries.forget_silent_workers(self.db, 3 * self.settings.heartbeat_timeout_s)
            except DatabaseUnavailable as exc:
                healthy_since = trio.current_time()
                log.warning("lease reaper skipped a round", action="reap_retry", error=str(exc))
                continue
            metrics.TASKS_RECOVERED.labels("lease_expired").inc(len(rows))
            for row in rows:
                log.warning("lease expired, task recovered", action="lease_expired",
                            task_id=str(row["task_id"]), status=row["status"])
            if rows:
                self.wake()

    # ------------------------------------------------------------------ dispatch

    async def dispatch_forever(self) -> None:
        await run_rounds(self._dispatch_once, self._waker, paused="dispatch paused",
                         action="dispatch_retry")

    async def _dispatch_once(self) -> float:
        """Claim and push one round; returns how long to sleep (0: go again at once)."""
        now = trio.current_time()
        credits = self.registry.credits(now)
        total = sum(c.available for c in credits)
        if total == 0:
            return self._backoff_wait(now)
        self._rotation += 1
        slots = dispatch.plan(credits, min(total, self.settings.max_claim), rotation=self._rotation)
        claimed = await queries.claim(self.db, slots, self.id, self.settings.lease_s)
        if claimed:
            self._push_all(claimed)
            metrics.CLAIM_BATCH.observe(len(claimed))
            for task in claimed:
                metrics.DISPATCH_LATENCY.observe(
                    max(0.0, (task.picked_at - task.scheduled_at).total_seconds()))
        if len(claimed) == len(slots):
            return 0.0
        due_in = await queries.seconds_until_due(self.db)
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

    def _push_all(self, claimed: list[queries.Claimed]) -> None:
        batches: dict[str, list[queries.Claimed]] = {}
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

    async def _push(self, link: WorkerLink, tasks: list[queries.Claimed]) -> None:
        request = pb.PushRequest(
            coordinator_id=self.id,
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
            response = await link.peer.call("push", request, timeout=self.settings.push_timeout_s)
        except RpcFailed as exc:
            metrics.PUSH_FAILURES.inc()
            link.credit = dispatch.release(link.credit, len(tasks))
            link.push_failures += 1
            link.resume_at = trio.current_time() + exponential(
                link.push_failures, base=0.1, cap=5.0, jitter=random.random()
            )
            log.warning(
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
            self.wake()
            return
        link.push_failures = 0
        rejected = set(response.rejected)
        if rejected:
            link.credit = dispatch.release(link.credit, len(rejected))
            await self._undo(link.worker_id, [t for t in tasks if str(t.task_id) in rejected])
        self._advertise(link, response.capacity)
        log.debug(
            "pushed",
            action="tasks_pushed",
            worker_id=link.worker_id,
            accepted=len(response.accepted),
            rejected=len(rejected),
        )

    async def _undo(self, worker_id: str, tasks: list[queries.Claimed]) -> None:
        try:
            count = await queries.undo_push(self.db, [(t.task_id, t.attempt) for t in tasks])
        except DatabaseUnavailable as exc:
            log.warning(
                "could not hand back tasks; their leases will",
                action="undo_failed",
                worker_id=worker_id,
                tasks=len(tasks),
                error=str(exc),
            )
            return
        log.info(
            "tasks handed back for re-dispatch",
            action="push_undone",
            worker_id=worker_id,
            tasks=count,
        )
        self.wake()

    # ------------------------------------------------------------------ notifications

    async def follow_notifications(self) -> None:
        """LISTEN tm_due (wake the dispatcher) and tm_cancel (stop tasks on workers)."""
        tries = 0
        while True:
            try:
                async with self.db.listen("tm_due") as due, self.db.listen("tm_cancel") as cancels:
                    tries = 0
                    self.wake()  # anything that happened while not listening
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._on_due, due, nursery.cancel_scope)
                        nursery.start_soon(self._on_cancel, cancels, nursery.cancel_scope)
            except DatabaseUnavailable as exc:
                log.warning(
                    "not listening for notifications", action="listen_retry", error=str(exc)
                )
            tries += 1
            await trio.sleep(exponential(tries, base=0.2, cap=5.0, jitter=random.random()))

    async def _on_due(
        self, channel: trio.MemoryReceiveChannel[str], scope: trio.CancelScope
    ) -> None:
        async for _payload in channel:
            self.wake()
        scope.cancel()  # connection lost: reconnect

    async def _on_cancel(
        self, channel: trio.MemoryReceiveChannel[str], scope: trio.CancelScope
    ) -> None:
        async for payload in channel:
            task_id, attempt, worker_id = payload.split(" ", 2)
            link = self.registry.get(worker_id)
            if link is not None:
                self._nursery.start_soon(self._cancel_on_worker, link, task_id, int(attempt))
        scope.cancel()

    async def _cancel_on_worker(self, link: WorkerLink, task_id: str, attempt: int) -> None:
        try:
            await link.peer.call(
                "cancel",
                pb.CancelRequest(task_id=task_id, attempt=attempt),
                timeout=self.settings.push_timeout_s,
            )
            log.info(
                "cancel sent to worker",
                action="cancel_sent",
                task_id=task_id,
                worker_id=link.worker_id,
                attempt=attempt,
            )
        except RpcFailed as exc:
            log.warning(
                "cancel not delivered",
                action="cancel_failed",
                task_id=task_id,
                worker_id=link.worker_id,
                error=str(exc),
            )


def _time(micros: int) -> datetime:
    if micros <= 0:
        return datetime.now(UTC)
    try:
        return from_micros(micros)
    except (OverflowError, ValueError, OSError):
        return datetime.now(UTC)


async def serve_coordinator(
    settings: CoordinatorSettings,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a coordinator until `stop` is set or it is cancelled; reports the bound address.

    Waits for the database (logged backoff) and applies migrations first. Stopping closes
    the gRPC server; tasks held by its workers stay theirs (workers reconnect to any
    coordinator and re-register them). Must run inside `trio_asyncio.open_loop()`.
    """
    host, port = split_address(settings.grpc_addr)
    async with open_database(settings.database_url, max_size=settings.pool_size) as db:
        await migrate(db)
        async with trio.open_nursery() as nursery:
            coordinator = Coordinator(settings, db, nursery)
            server_tls = tls.server_context(settings.tls) if settings.tls else None
            bound = await nursery.start(partial(
                serve_grpc, [bridge(pb.CoordinatorServiceBase, coordinator)], host, port,
                ssl=server_tls,
            ))
            nursery.start_soon(coordinator.dispatch_forever)
            nursery.start_soon(coordinator.follow_notifications)
            nursery.start_soon(coordinator.reap)
            nursery.start_soon(serve_recurring, settings, db, coordinator.id)
            metrics.WORKERS.set_function(lambda: len(coordinator.registry))
            metrics.watch_pool("coordinator", db.statistics)
            if settings.metrics_addr:
                await nursery.start(metrics.serve_metrics, settings.metrics_addr)
            address = f"{bound[0]}:{bound[1]}"
            log.info(
                "coordinator ready",
                action="coordinator_ready",
                address=address,
                coordinator_id=coordinator.id,
            )
            task_status.started(address)
            try:
                await (stop if stop is not None else trio.Event()).wait()
            finally:
                metrics.WORKERS.set_function(lambda: 0)  # let this coordinator go
            nursery.cancel_scope.cancel()
