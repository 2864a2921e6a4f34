"""Bad gRPC input to a live coordinator is refused and logged; the coordinator keeps serving."""

from __future__ import annotations

import uuid
from functools import partial

import pytest
import trio
import trio_asyncio

from tm.aio.grpc import CoordinatorPeer, RpcFailed, open_peer
from tm.coordinator.service import serve_coordinator
from tm.proto.gen.taskmaster import v1 as pb
from tm.settings import CoordinatorSettings


async def test_bad_worker_messages_are_refused_and_the_coordinator_survives(
    database_url: str,
) -> None:
    settings = CoordinatorSettings(database_url=database_url, grpc_addr="127.0.0.1:0")
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            address = await nursery.start(partial(serve_coordinator, settings))
            async with open_peer(CoordinatorPeer, address) as peer:
                capacity = pb.Capacity(capacity=5, free_slots=5)
                for bad in (
                    pb.RegisterRequest(worker_id="", address="127.0.0.1:1", capacity=capacity),
                    pb.RegisterRequest(worker_id="w" * 201, address="127.0.0.1:1",
                                       capacity=capacity),
                    pb.RegisterRequest(worker_id="w1", address="no port", capacity=capacity),
                    pb.RegisterRequest(worker_id="w1", address="127.0.0.1:1"),
                ):
                    with pytest.raises(RpcFailed) as refused:
                        await peer.register(bad, timeout=5)
                    assert refused.value.status == "INVALID_ARGUMENT"

                # An unknown worker is told so (it must register), not crashed on.
                beat = await peer.heartbeat(pb.HeartbeatRequest(
                    worker_id="never-registered", capacity=capacity), timeout=5)
                assert beat.known is False

                # Reports with malformed ids, kinds and attempts are skipped one by one.
                report = await peer.report(pb.ReportRequest(
                    worker_id="never-registered",
                    updates=[
                        pb.TaskUpdate(task_id="not-a-uuid", attempt=1,
                                      kind=pb.UpdateKind.COMPLETED),
                        pb.TaskUpdate(task_id=str(uuid.uuid4()), attempt=0,
                                      kind=pb.UpdateKind.COMPLETED),
                        pb.TaskUpdate(task_id=str(uuid.uuid4()), attempt=1,
                                      kind=pb.UpdateKind.UNSPECIFIED),
                        pb.TaskUpdate(task_id=str(uuid.uuid4()), attempt=1,
                                      kind=pb.UpdateKind.COMPLETED),  # unknown task: stale
                    ],
                ), timeout=5)
                assert (report.applied, report.stale, report.known) == (0, 1, False)

                # Still serving: a proper registration works.
                registered = await peer.register(pb.RegisterRequest(
                    worker_id="w-good", address="127.0.0.1:9", capacity=capacity), timeout=5)
                assert registered.coordinator_id.startswith("c-")
            nursery.cancel_scope.cancel()
