"""The worker's outbox (tm.worker.outbox.Outbox.serve_reporter): task updates go to the
coordinator in batches of at most `report_batch`, each task's result exactly once (a fast
task's `started` folded into its result), and while reporting fails the updates are kept
and later delivered in order — none lost, none sent twice.

The coordinator is a fake peer object with the `report(request, timeout=...)` of
tm.aio.grpc.CoordinatorPeer; the worker runs its real executors (tm.worker.execution) and
reporter.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import trio

from tm.aio.grpc import RpcFailed
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import WorkerSettings
from tm.worker.executors import Result, run_echo
from tm.worker.service import Worker

Kind = pb.UpdateKind
FINAL = {Kind.COMPLETED, Kind.FAILED, Kind.CANCELLED, Kind.RETURNED}


class FakeCoordinator:
    """Records every report call; fails the calls it is told to; can hold calls back."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.attempts: list[list[pb.TaskUpdate]] = []  # every report call, failed or not
        self.delivered: list[list[pb.TaskUpdate]] = []  # the calls that succeeded
        self.capacities: list[pb.Capacity] = []  # of the calls that succeeded
        self.fail: dict[int, RpcFailed] = {}  # attempt number (from 0) -> its error
        self.gate: trio.Event | None = None  # while set to an unset event, calls wait

    async def report(self, request: pb.ReportRequest, *, timeout: float) -> pb.ReportResponse:
        assert isinstance(request, pb.ReportRequest)
        assert request.worker_id == self.worker_id
        assert timeout > 0
        # A copy: what went over the wire, whatever the worker does with its objects later.
        updates = copy.deepcopy(list(request.updates))
        self.attempts.append(updates)
        if self.gate is not None:
            await self.gate.wait()
        error = self.fail.get(len(self.attempts) - 1)
        if error is not None:
            raise error
        assert request.capacity is not None
        self.delivered.append(updates)
        self.capacities.append(copy.deepcopy(request.capacity))
        return pb.ReportResponse(applied=len(updates), known=True)

    def updates(self) -> list[pb.TaskUpdate]:
        return [u for batch in self.delivered for u in batch]

    def finished(self) -> set[str]:
        return {u.task_id for u in self.updates() if u.kind in FINAL}


async def instant(command: str) -> Result:
    """An executor that finishes without yielding: its `started` is always still unsent
    when its result is reported."""
    return Result(0, f"ran {command}")


def tasks(count: int, prefix: str = "t") -> list[pb.Task]:
    return [
        pb.Task(task_id=str(uuid.uuid4()), command=f"{prefix}{i}", attempt=1 + i % 3,
                scheduled_at_us=1)
        for i in range(count)
    ]


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.005)


def settings(**kwargs: Any) -> WorkerSettings:
    return WorkerSettings(worker_id="w-test", rpc_timeout_s=5.0, **kwargs)


async def push_all(worker: Worker, batch: list[pb.Task]) -> None:
    response = await worker.push(pb.PushRequest(coordinator_id="c1", tasks=batch))
    assert response.accepted == [t.task_id for t in batch]
    assert response.rejected == []


def serve_reporter(nursery: trio.Nursery, worker: Worker, coordinator: FakeCoordinator) -> None:
    nursery.start_soon(
        worker.outbox.serve_reporter,
        coordinator,
        worker.execution.capacity_message,
    )


def check_each_task_reported_once(
    coordinator: FakeCoordinator, pushed: list[pb.Task]
) -> dict[str, list[pb.TaskUpdate]]:
    """Every pushed task has exactly one final update, for its attempt, after at most one
    `started`; a result standing in for an unsent `started` carries its time."""
    by_task: dict[str, list[pb.TaskUpdate]] = {}
    for update in coordinator.updates():
        by_task.setdefault(update.task_id, []).append(update)
    assert set(by_task) == {t.task_id for t in pushed}
    for task in pushed:
        updates = by_task[task.task_id]
        assert all(u.attempt == task.attempt for u in updates)
        kinds = [u.kind for u in updates]
        assert kinds in ([Kind.COMPLETED], [Kind.STARTED, Kind.COMPLETED]), kinds
        result = updates[-1]
        assert result.output == f"ran {task.command}" or result.output == task.command
        if len(updates) == 1:  # merged: one update carrying the start time
            assert 0 < result.started_at_us <= result.at_us
        else:
            assert result.started_at_us == 0
            assert updates[0].at_us <= result.at_us
    return by_task


async def test_batches_never_exceed_report_batch_and_each_task_is_reported_once() -> None:
    worker = Worker(settings(report_batch=8, concurrency=3, queue_size=200), instant)
    coordinator = FakeCoordinator(worker.id)
    coordinator.gate = trio.Event()  # hold the first report until every task has finished
    pushed = tasks(101)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(worker.settings.concurrency):
                nursery.start_soon(worker.execution.run_executor)
            serve_reporter(nursery, worker, coordinator)
            await push_all(worker, pushed[:50])
            await push_all(worker, pushed[50:])
            await wait_for(lambda: not worker.execution.held and len(coordinator.attempts) == 1)
            coordinator.gate.set()
            await wait_for(lambda: len(coordinator.finished()) == len(pushed))
            nursery.cancel_scope.cancel()

    sizes = [len(batch) for batch in coordinator.delivered]
    assert all(1 <= size <= 8 for size in sizes), sizes
    # The backlog left behind the held report went out in full batches.
    assert sizes[1:-1] == [8] * (len(sizes) - 2), sizes
    assert sum(sizes) == len(pushed)  # no task needed two updates: all were merged
    by_task = check_each_task_reported_once(coordinator, pushed)
    assert all(len(updates) == 1 for updates in by_task.values())
    # The reports say how much room the worker has: all of it, at the end.
    assert coordinator.capacities[-1].free_slots == worker.execution.capacity
    assert coordinator.capacities[-1].accepted_total == len(pushed)


async def test_a_started_update_already_sent_is_not_merged() -> None:
    release = trio.Event()

    async def slow_for_some(command: str) -> Result:
        if command.startswith("slow"):
            await release.wait()
        return Result(0, f"ran {command}")

    worker = Worker(settings(report_batch=4, concurrency=4), slow_for_some)
    coordinator = FakeCoordinator(worker.id)
    slow, fast = tasks(2, "slow"), tasks(9, "fast")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(worker.settings.concurrency):
                nursery.start_soon(worker.execution.run_executor)
            serve_reporter(nursery, worker, coordinator)
            await push_all(worker, slow + fast)
            sent_started: set[str] = set()

            def slow_started() -> bool:
                sent_started.update(
                    u.task_id for u in coordinator.updates() if u.kind == Kind.STARTED)
                return {t.task_id for t in slow} <= sent_started

            await wait_for(slow_started)
            await wait_for(lambda: len(coordinator.finished()) == len(fast))
            release.set()
            await wait_for(lambda: len(coordinator.finished()) == len(slow) + len(fast))
            nursery.cancel_scope.cancel()

    assert all(len(batch) <= 4 for batch in coordinator.delivered)
    by_task = check_each_task_reported_once(coordinator, slow + fast)
    for task in slow:
        assert [u.kind for u in by_task[task.task_id]] == [Kind.STARTED, Kind.COMPLETED]


async def test_the_real_echo_executor_reports_each_task_once() -> None:
    """With an executor that yields, a `started` may or may not go out before its result;
    either way each task has one result, after at most one `started`."""
    worker = Worker(settings(report_batch=16, concurrency=5, queue_size=300), run_echo)
    coordinator = FakeCoordinator(worker.id)
    pushed = tasks(250)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(worker.settings.concurrency):
                nursery.start_soon(worker.execution.run_executor)
            serve_reporter(nursery, worker, coordinator)
            for start in range(0, len(pushed), 25):
                await push_all(worker, pushed[start : start + 25])
                await trio.lowlevel.checkpoint()
            await wait_for(lambda: len(coordinator.finished()) == len(pushed))
            nursery.cancel_scope.cancel()
    assert all(1 <= len(batch) <= 16 for batch in coordinator.delivered)
    assert coordinator.attempts == coordinator.delivered
    check_each_task_reported_once(coordinator, pushed)


async def test_failed_reports_are_kept_and_delivered_later_in_order() -> None:
    # One executor: tasks run, and are reported, in the order they were pushed.
    worker = Worker(settings(report_batch=8, concurrency=1, queue_size=100), instant)
    coordinator = FakeCoordinator(worker.id)
    coordinator.fail = {
        0: RpcFailed("127.0.0.1:1: connection refused", delivered=False),
        1: RpcFailed("127.0.0.1:1: UNAVAILABLE database down", delivered=False,
                     status="UNAVAILABLE"),
        2: RpcFailed("127.0.0.1:1: TimeoutError", delivered=False),
    }
    pushed = tasks(45)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.execution.run_executor)
            serve_reporter(nursery, worker, coordinator)
            await push_all(worker, pushed[:5])
            await wait_for(lambda: len(coordinator.attempts) >= 1)  # the first one failed
            await push_all(worker, pushed[5:30])  # more piles up while reports fail
            await wait_for(lambda: len(coordinator.attempts) >= 2)
            await push_all(worker, pushed[30:])
            await wait_for(lambda: len(coordinator.finished()) == len(pushed))
            nursery.cancel_scope.cancel()

    assert all(1 <= len(batch) <= 8 for batch in coordinator.attempts)
    failed = coordinator.attempts[:3]
    assert coordinator.attempts[3:] == coordinator.delivered
    # Each failed batch was kept and sent again first: the next try starts with it.
    for attempt, next_attempt in zip(failed, coordinator.attempts[1:4], strict=True):
        ids = [u.task_id for u in attempt]
        assert [u.task_id for u in next_attempt[: len(ids)]] == ids
    # Delivered exactly once each, in the order the tasks ran (= pushed).
    delivered = [u.task_id for u in coordinator.updates()]
    assert delivered == [t.task_id for t in pushed]
    assert not worker.outbox  # nothing left behind
    check_each_task_reported_once(coordinator, pushed)


async def test_a_report_failing_after_some_batches_loses_nothing() -> None:
    """Failures in the middle of a backlog: batches already delivered are not resent,
    the failed one is resent, the rest follow in order."""
    worker = Worker(settings(report_batch=5, concurrency=1, queue_size=100), instant)
    coordinator = FakeCoordinator(worker.id)
    coordinator.gate = trio.Event()  # a backlog builds up behind the first report
    coordinator.fail = {3: RpcFailed("reset", delivered=False),
                        4: RpcFailed("refused", delivered=False)}
    pushed = tasks(37)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.execution.run_executor)
            serve_reporter(nursery, worker, coordinator)
            await push_all(worker, pushed)
            await wait_for(lambda: not worker.execution.held and len(coordinator.attempts) == 1)
            coordinator.gate.set()
            await wait_for(lambda: len(coordinator.finished()) == len(pushed))
            nursery.cancel_scope.cancel()

    assert all(1 <= len(batch) <= 5 for batch in coordinator.attempts)
    assert [len(batch) for batch in coordinator.attempts[1:6]] == [5] * 5
    # attempts 3 and 4 were the same batch as attempt 5, which got through
    assert coordinator.attempts[3] == coordinator.attempts[4] == coordinator.attempts[5]
    assert coordinator.delivered == coordinator.attempts[:3] + coordinator.attempts[5:]
    assert [u.task_id for u in coordinator.updates()] == [t.task_id for t in pushed]
    check_each_task_reported_once(coordinator, pushed)


async def test_a_finished_task_stays_held_until_its_result_is_delivered() -> None:
    """Heartbeats renew the leases of what `held_messages` lists: a task whose result is
    stuck in the outbox (the coordinator cannot store reports) must stay listed, or its
    lease lapses and it runs again (seen once in the database-outage e2e test)."""
    worker = Worker(settings(report_batch=8, concurrency=2), instant)
    coordinator = FakeCoordinator(worker.id)
    coordinator.fail = {
        n: RpcFailed("127.0.0.1:1: UNAVAILABLE database down", delivered=False)
        for n in range(3)
    }
    pushed = tasks(3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(worker.settings.concurrency):
                nursery.start_soon(worker.execution.run_executor)
            await push_all(worker, pushed)
            execution = worker.execution
            await wait_for(lambda: not execution.held)  # all ran; their results not delivered
            listed = {(h.task_id, h.attempt) for h in execution.held_messages()}
            assert listed == {(t.task_id, t.attempt) for t in pushed}
            assert execution.capacity_message().free_slots == execution.capacity  # slots free
            serve_reporter(nursery, worker, coordinator)
            await wait_for(lambda: not execution.held_messages())  # delivered: nothing to renew
            assert coordinator.finished() == {t.task_id for t in pushed}
            nursery.cancel_scope.cancel()
