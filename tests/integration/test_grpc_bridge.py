"""tm.aio.grpc: trio handlers served by grpclib, trio callers, error mapping, and shutdown
with clients still connected (grpclib's wait_closed hang on Python >= 3.12)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_asyncio

from tm.aio.grpc import Code, RpcError, RpcFailed, WorkerPeer, bridge, open_peer, serve_grpc
from tm.core.addresses import join_address
from tm.proto.gen.taskmaster.v1 import (
    CancelRequest,
    CancelResponse,
    Capacity,
    DrainRequest,
    DrainResponse,
    PushRequest,
    PushResponse,
    Task,
    WorkerServiceBase,
)

CAPACITY = 5


class FakeWorker:
    """A WorkerService written as plain trio code."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.entered = trio.Event()

    async def push(self, message: PushRequest) -> PushResponse:
        trio.lowlevel.current_task()  # raises unless this really runs as a trio task
        await trio.sleep(0.001)
        if message.coordinator_id == "invalid":
            raise RpcError(Code.INVALID_ARGUMENT, "coordinator_id is invalid")
        if message.coordinator_id == "crash":
            raise RuntimeError("handler bug")
        if message.coordinator_id == "hang":
            self.entered.set()
            await trio.sleep_forever()
        accepted = [t.task_id for t in message.tasks][: CAPACITY - len(self.held)]
        rejected = [t.task_id for t in message.tasks if t.task_id not in accepted]
        self.held += accepted
        return PushResponse(
            accepted=accepted,
            rejected=rejected,
            capacity=Capacity(capacity=CAPACITY, free_slots=CAPACITY - len(self.held)),
        )

    async def cancel(self, message: CancelRequest) -> CancelResponse:
        found = message.task_id in self.held
        if found:
            self.held.remove(message.task_id)
        return CancelResponse(found=found)

    async def drain(self, message: DrainRequest) -> DrainResponse:
        return DrainResponse(running=len(self.held))


def tasks(*ids: str) -> list[Task]:
    return [Task(task_id=i, command=f"echo {i}", attempt=1, scheduled_at_us=1) for i in ids]


@asynccontextmanager
async def serving(
    worker: FakeWorker, *, grace: float = 2.0
) -> AsyncIterator[tuple[str, trio.CancelScope]]:
    """Serve `worker` on a free port; yields its address and the server's cancel scope."""
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
            with scope:
                await serve_grpc(
                    [bridge(WorkerServiceBase, worker)],
                    "127.0.0.1",
                    0,
                    grace=grace,
                    task_status=task_status,
                )

        host, port = await nursery.start(run)
        assert port != 0
        yield join_address(host, port), scope
        scope.cancel()


async def test_push_cancel_drain_round_trip() -> None:
    worker = FakeWorker()
    with trio.fail_after(10):
        async with (
            trio_asyncio.open_loop(),
            serving(worker) as (address, _),
            open_peer(WorkerPeer, address) as peer,
        ):
            first = await peer.push(
                PushRequest(coordinator_id="c1", tasks=tasks("a", "b")), timeout=5
            )
            assert isinstance(first, PushResponse)
            assert first.accepted == ["a", "b"]
            assert first.rejected == []
            assert first.capacity is not None
            assert (first.capacity.capacity, first.capacity.free_slots) == (5, 3)

            second = await peer.push(
                PushRequest(coordinator_id="c1", tasks=tasks("c", "d", "e", "f")),
                timeout=5,
            )
            assert second.accepted == ["c", "d", "e"]
            assert second.rejected == ["f"]
            assert worker.held == ["a", "b", "c", "d", "e"]

            gone = await peer.cancel(CancelRequest(task_id="b", attempt=1), timeout=5)
            assert gone.found is True
            missing = await peer.cancel(CancelRequest(task_id="zz"), timeout=5)
            assert missing.found is False
            drained = await peer.drain(DrainRequest(), timeout=5)
            assert drained.running == 4


async def test_rpc_error_maps_to_status() -> None:
    worker = FakeWorker()
    with trio.fail_after(10):
        async with (
            trio_asyncio.open_loop(),
            serving(worker) as (address, _),
            open_peer(WorkerPeer, address) as peer,
        ):
            with pytest.raises(RpcFailed) as failed:
                await peer.push(
                    PushRequest(coordinator_id="invalid", tasks=tasks("a")), timeout=5
                )
            assert failed.value.status == "INVALID_ARGUMENT"
            assert "coordinator_id is invalid" in str(failed.value)
            assert failed.value.delivered is None  # it reached the handler
            assert worker.held == []


async def test_handler_exception_is_internal_and_server_keeps_serving() -> None:
    worker = FakeWorker()
    with trio.fail_after(10):
        async with trio_asyncio.open_loop(), serving(worker) as (address, _):
            async with open_peer(WorkerPeer, address) as peer:
                for _ in range(2):
                    with pytest.raises(RpcFailed) as failed:
                        await peer.push(
                            PushRequest(coordinator_id="crash", tasks=tasks("a")),
                            timeout=5,
                        )
                    assert failed.value.status == "INTERNAL"
                    assert "handler bug" not in str(failed.value)  # no internals to the peer
                ok = await peer.push(
                    PushRequest(coordinator_id="c1", tasks=tasks("a")), timeout=5
                )
                assert ok.accepted == ["a"]
            # a new connection is served too
            async with open_peer(WorkerPeer, address) as again:
                drained = await again.drain(DrainRequest(), timeout=5)
                assert drained.running == 1


async def test_calling_a_closed_port_is_not_delivered() -> None:
    worker = FakeWorker()
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            async with serving(worker) as (address, scope):
                pass  # started and stopped: nothing listens on the port any more
            assert scope.cancelled_caught
            async with open_peer(WorkerPeer, address) as peer:
                with pytest.raises(RpcFailed) as failed:
                    await peer.push(
                        PushRequest(coordinator_id="c1", tasks=tasks("a")), timeout=5
                    )
                assert failed.value.delivered is False
                assert failed.value.status is None
            assert worker.held == []


async def test_shutdown_with_connected_client_is_prompt() -> None:
    """Cancelling the server while a client channel is open returns well before `grace`."""
    worker = FakeWorker()
    grace = 8.0  # longer than fail_after below: a hang in wait_closed fails the test
    with trio.fail_after(5):
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            stopped = trio.Event()

            async def run(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                with scope:
                    await serve_grpc(
                        [bridge(WorkerServiceBase, worker)],
                        "127.0.0.1",
                        0,
                        grace=grace,
                        task_status=task_status,
                    )
                stopped.set()

            host, port = await nursery.start(run)
            async with open_peer(WorkerPeer, join_address(host, port)) as peer:
                ok = await peer.push(
                    PushRequest(coordinator_id="c1", tasks=tasks("a")), timeout=5
                )
                assert ok.accepted == ["a"]
                began = trio.current_time()
                scope.cancel()  # the client's connection is still open
                await stopped.wait()
                assert trio.current_time() - began < 2.0
                # and the server is really gone
                with pytest.raises(RpcFailed) as failed:
                    await peer.drain(DrainRequest(), timeout=2)
                assert failed.value.delivered is not True


async def test_shutdown_with_call_in_flight_is_prompt() -> None:
    worker = FakeWorker()
    with trio.fail_after(5):
        async with trio_asyncio.open_loop():
            outcome: list[BaseException] = []
            async with (
                serving(worker, grace=8.0) as (address, scope),
                open_peer(WorkerPeer, address) as peer,
            ):

                async def hung_call() -> None:
                    try:
                        await peer.push(
                            PushRequest(coordinator_id="hang", tasks=tasks("a")),
                            timeout=4,
                        )
                    except RpcFailed as exc:
                        outcome.append(exc)

                async with trio.open_nursery() as calls:
                    calls.start_soon(hung_call)
                    await worker.entered.wait()
                    began = trio.current_time()
                    scope.cancel()
                assert trio.current_time() - began < 2.0
            assert len(outcome) == 1
            assert isinstance(outcome[0], RpcFailed)
            assert outcome[0].delivered is not False  # it did reach the handler
