"""Credit-based push against a live coordinator: a worker is never sent more tasks than the
free slots it advertised, a large due backlog is not claimed beyond that credit, freed
slots are refilled exactly, and no task is pushed before its scheduled time.

The workers here are fakes served over real gRPC (tm.aio.grpc): they register with the
real coordinator, accept pushes up to their capacity, record everything, and finish
tasks only when the test reports them finished.

A stopped coordinator closes its channels to workers (the last test).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import trio
import trio_asyncio
from grpclib.client import Channel

from tests.integration.helpers import db_now, insert, insert_due, new_task
from tm.aio.grpc import CoordinatorPeer, bridge, open_peer, serve_grpc
from tm.aio.pg import Database, open_database
from tm.coordinator.service import serve_coordinator
from tm.core.addresses import join_address
from tm.core.timefmt import to_micros
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import CoordinatorSettings


def open_channels_to(address: str) -> int:
    """How many grpclib channels to `address` were never closed (private grpclib 0.4
    fields). A count, so that no failure's traceback keeps a channel alive."""
    return sum(
        1 for o in gc.get_objects()
        if isinstance(o, Channel) and join_address(o._host, o._port) == address
        and o._protocol is not None
    )


@dataclass
class Push:
    tasks: list[pb.Task]
    free_slots: int  # the worker's free slots when the push arrived
    at_us: int  # wall clock when it arrived


class FakeWorker:
    """A WorkerService that holds what it is pushed until told the tasks finished."""

    def __init__(self, worker_id: str, capacity: int) -> None:
        self.worker_id = worker_id
        self.capacity = capacity
        self.held: dict[str, pb.Task] = {}
        self.received: list[pb.Task] = []
        self.pushes: list[Push] = []
        self.rejected: list[str] = []
        self.accepted_total = 0
        self.max_held = 0
        self.address = ""

    def capacity_message(self) -> pb.Capacity:
        return pb.Capacity(
            capacity=self.capacity,
            free_slots=self.capacity - len(self.held),
            accepted_total=self.accepted_total,
        )

    async def push(self, request: pb.PushRequest) -> pb.PushResponse:
        self.pushes.append(
            Push(list(request.tasks), self.capacity - len(self.held), time.time_ns() // 1000)
        )
        accepted = []
        for task in request.tasks:
            if len(self.held) >= self.capacity:
                self.rejected.append(task.task_id)
                continue
            self.held[task.task_id] = task
            self.received.append(task)
            self.accepted_total += 1
            accepted.append(task.task_id)
        self.max_held = max(self.max_held, len(self.held))
        rejected = [t.task_id for t in request.tasks if t.task_id not in accepted]
        return pb.PushResponse(
            accepted=accepted, rejected=rejected, capacity=self.capacity_message()
        )

    async def cancel(self, request: pb.CancelRequest) -> pb.CancelResponse:
        return pb.CancelResponse(found=False)

    async def drain(self, request: pb.DrainRequest) -> pb.DrainResponse:
        return pb.DrainResponse(running=len(self.held))

    def held_messages(self) -> list[pb.HeldTask]:
        return [pb.HeldTask(task_id=t.task_id, attempt=t.attempt) for t in self.held.values()]

    async def serve_and_register(self, nursery: trio.Nursery, coordinator: CoordinatorPeer) -> None:
        host, port = await nursery.start(
            partial(serve_grpc, [bridge(pb.WorkerServiceBase, self)], "127.0.0.1", 0)
        )
        self.address = join_address(host, port)
        await coordinator.register(
            pb.RegisterRequest(
                worker_id=self.worker_id,
                address=self.address,
                capacity=self.capacity_message(),
                concurrency=self.capacity,
            ),
            timeout=5,
        )

    async def complete(self, coordinator: CoordinatorPeer, count: int) -> list[pb.Task]:
        """Finish the `count` oldest held tasks and report them (with the freed slots)."""
        done = list(self.held.values())[:count]
        for task in done:
            del self.held[task.task_id]
        now = time.time_ns() // 1000
        response = await coordinator.report(
            pb.ReportRequest(
                worker_id=self.worker_id,
                updates=[
                    pb.TaskUpdate(task_id=t.task_id, attempt=t.attempt,
                                  kind=pb.UpdateKind.COMPLETED, at_us=now, exit_code=0,
                                  started_at_us=now - 1)
                    for t in done
                ],
                capacity=self.capacity_message(),
            ),
            timeout=5,
        )
        assert (response.applied, response.stale, response.known) == (count, 0, True)
        return done

    def check_pushes_fit(self) -> None:
        """Every push fitted the free slots the worker had; nothing was ever refused."""
        for push in self.pushes:
            assert 1 <= len(push.tasks) <= push.free_slots, (len(push.tasks), push.free_slots)
        assert self.rejected == []
        assert self.max_held <= self.capacity
        assert len({t.task_id for t in self.received}) == len(self.received)


def received(worker: FakeWorker, count: int) -> bool:
    return len(worker.received) >= count


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.01)


def coordinator_settings(db_url: str, **kwargs: Any) -> CoordinatorSettings:
    # Long heartbeat and lease timeouts: the fake workers do not heartbeat, and nothing
    # here may be recovered behind the test's back.
    return CoordinatorSettings(
        database_url=db_url, grpc_addr="127.0.0.1:0", heartbeat_timeout_s=60.0,
        lease_s=300.0, scan_interval_s=0.2, **kwargs,
    )


async def statuses(db: Database) -> dict[tuple[str, str | None], int]:
    """Tasks by status and, for held ones, by the worker holding them."""
    rows = await db.fetch(
        "SELECT status, CASE WHEN status IN ('picked', 'running') THEN worker_id END AS w,"
        " count(*) AS n FROM tasks GROUP BY 1, 2"
    )
    return {(r["status"], r["w"]): r["n"] for r in rows}


async def test_a_worker_never_gets_more_than_its_free_slots_from_a_large_backlog(
    db_url: str,
) -> None:
    backlog = 5000
    with trio.fail_after(30):
        async with (
            trio_asyncio.open_loop(),
            open_database(db_url, retry_for=5) as db,
            trio.open_nursery() as nursery,
        ):
            await insert_due(db, backlog)
            address = await nursery.start(
                partial(serve_coordinator, coordinator_settings(db_url)))
            async with open_peer(CoordinatorPeer, address) as coordinator:
                full = FakeWorker("w-full", capacity=7)
                await full.serve_and_register(nursery, coordinator)
                await wait_for(lambda: len(full.held) == 7)

                # A heartbeat written before the pushes arrived (older accepted_total)
                # must not give the pushed slots back.
                beat = await coordinator.heartbeat(pb.HeartbeatRequest(
                    worker_id=full.worker_id,
                    capacity=pb.Capacity(capacity=7, free_slots=7, accepted_total=0),
                ), timeout=5)
                assert beat.known

                # A probe with one slot gets a task: dispatch rounds ran after the first
                # worker filled up, and gave it nothing more.
                probe = FakeWorker("w-probe", capacity=1)
                await probe.serve_and_register(nursery, coordinator)
                await wait_for(lambda: len(probe.held) == 1)
                assert len(full.received) == 7
                full.check_pushes_fit()
                probe.check_pushes_fit()

                # Bounded claims: the backlog stays scheduled; only pushed tasks were claimed.
                assert await statuses(db) == {
                    ("picked", "w-full"): 7,
                    ("picked", "w-probe"): 1,
                    ("scheduled", None): backlog - 8,
                }
                assert await db.fetchval("SELECT count(*) FROM tasks WHERE attempt > 0") == 8

                # Three finish: exactly three more arrive, and it never holds more than 7.
                done = await full.complete(coordinator, 3)
                await wait_for(lambda: len(full.received) >= 10)
                assert len(full.received) == 10
                assert len(full.held) == 7
                # Another probe round (the probe frees its slot) after the refill.
                await probe.complete(coordinator, 1)
                await wait_for(lambda: len(probe.received) >= 2)
                assert len(probe.received) == 2
                assert len(full.received) == 10
                full.check_pushes_fit()
                probe.check_pushes_fit()

                assert await statuses(db) == {
                    ("completed", None): 4,
                    ("picked", "w-full"): 7,
                    ("picked", "w-probe"): 1,
                    ("scheduled", None): backlog - 12,
                }
                assert await db.fetchval("SELECT count(*) FROM tasks WHERE attempt > 0") == 12
                completed = await db.fetch(
                    "SELECT task_id FROM tasks WHERE status = 'completed'")
                assert {str(r["task_id"]) for r in completed} >= {t.task_id for t in done}
                # The oldest due tasks went first, in order, with no gaps.
                oldest = await db.fetch(
                    "SELECT task_id FROM tasks ORDER BY scheduled_at, task_id LIMIT 12")
                sent = {t.task_id for t in full.received + probe.received}
                assert {str(r["task_id"]) for r in oldest} == sent
            nursery.cancel_scope.cancel()


async def test_credit_is_split_between_workers_and_refilled_exactly(db_url: str) -> None:
    """Several workers of different sizes under one backlog: each fills to its capacity
    and no further, and as each finishes tasks it gets back exactly that many."""
    with trio.fail_after(30):
        async with (
            trio_asyncio.open_loop(),
            open_database(db_url, retry_for=5) as db,
            trio.open_nursery() as nursery,
        ):
            await insert_due(db, 1000)
            address = await nursery.start(
                partial(serve_coordinator, coordinator_settings(db_url, max_claim=4)))
            async with open_peer(CoordinatorPeer, address) as coordinator:
                workers = [FakeWorker(f"w{i}", capacity=c) for i, c in enumerate((3, 5, 11))]
                for worker in workers:
                    await worker.serve_and_register(nursery, coordinator)
                await wait_for(lambda: all(len(w.held) == w.capacity for w in workers))
                for round_ in range(3):
                    for worker in workers:
                        before = len(worker.received)
                        finished = 1 + round_ % worker.capacity
                        await worker.complete(coordinator, finished)
                        await wait_for(partial(received, worker, before + finished))
                        assert len(worker.received) == before + finished
                        assert len(worker.held) == worker.capacity
                for worker in workers:
                    worker.check_pushes_fit()
                # max_claim bounds each claim, so a push is never bigger than it either.
                assert all(len(p.tasks) <= 4 for w in workers for p in w.pushes)
                total = sum(len(w.received) for w in workers)
                assert await db.fetchval(
                    "SELECT count(*) FROM tasks WHERE attempt > 0") == total
                assert await db.fetchval(
                    "SELECT count(*) FROM tasks WHERE status = 'picked'") == 3 + 5 + 11
            nursery.cancel_scope.cancel()


async def test_no_task_is_pushed_before_its_scheduled_time(db_url: str) -> None:
    count = 24
    with trio.fail_after(30):
        async with (
            trio_asyncio.open_loop(),
            open_database(db_url, retry_for=5) as db,
            trio.open_nursery() as nursery,
        ):
            address = await nursery.start(
                partial(serve_coordinator, coordinator_settings(db_url)))
            async with open_peer(CoordinatorPeer, address) as coordinator:
                worker = FakeWorker("w-clock", capacity=count)
                await worker.serve_and_register(nursery, coordinator)
                now = await db_now(db)
                # Due over the next ~1 s (and one far in the future), inserted unordered.
                offsets = [0.4 + 0.03 * ((i * 7) % count) for i in range(count)]
                ids = await insert(db, [
                    new_task(f"at +{o:.2f}s", now + timedelta(seconds=o)) for o in offsets
                ])
                [later] = await insert(db, [new_task("later", now + timedelta(hours=1))])
                await wait_for(lambda: len(worker.received) == count)

                rows = await db.fetch(
                    "SELECT task_id, scheduled_at, picked_at FROM tasks "
                    "WHERE task_id = ANY($1::uuid[])", ids)
                scheduled = {str(r["task_id"]): r["scheduled_at"] for r in rows}
                for push in worker.pushes:
                    for task in push.tasks:
                        # the pushed task says when it was due, truly
                        assert task.scheduled_at_us == to_micros(scheduled[task.task_id])
                        # and it arrived no earlier than that (wall clock, same machine)
                        assert push.at_us >= task.scheduled_at_us, (
                            task.command, push.at_us - task.scheduled_at_us)
                for row in rows:  # claimed no earlier, by the database's own clock
                    assert row["picked_at"] >= row["scheduled_at"]
                assert {t.task_id for t in worker.received} == {str(i) for i in ids}
                assert str(later) not in worker.held
                assert (await db.fetchval(
                    "SELECT status FROM tasks WHERE task_id = $1", later)) == "scheduled"
                worker.check_pushes_fit()
            nursery.cancel_scope.cancel()


async def test_a_stopped_coordinator_closes_its_channels_to_workers(db_url: str) -> None:
    with trio.fail_after(20):
        async with (
            trio_asyncio.open_loop(),
            open_database(db_url, retry_for=5) as db,
            trio.open_nursery() as nursery,
        ):
            await insert_due(db, 1)
            stop, stopped = trio.Event(), trio.Event()

            async def coordinator_until_stopped(task_status: trio.TaskStatus[str]) -> None:
                await serve_coordinator(
                    coordinator_settings(db_url), stop=stop, task_status=task_status)
                stopped.set()

            address = await nursery.start(coordinator_until_stopped)
            worker = FakeWorker("w-leak", capacity=1)
            async with open_peer(CoordinatorPeer, address) as coordinator:
                await worker.serve_and_register(nursery, coordinator)
                await wait_for(lambda: len(worker.held) == 1)  # its channel is connected
            assert open_channels_to(worker.address) == 1
            stop.set()
            await stopped.wait()
            assert open_channels_to(worker.address) == 0
            nursery.cancel_scope.cancel()
