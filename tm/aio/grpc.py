"""grpclib behind a trio-shaped API: serve a service as a trio task, call a peer from trio.

Handlers are written as plain trio `async def method(request) -> response` on an object
(`WorkerHandlers`, `CoordinatorHandlers` type them); `serve_grpc` serves them bridged into
grpclib's asyncio server. Raising `RpcError` from a handler answers the call with that
gRPC status; any other exception is logged and answered as INTERNAL without taking the
server down.

Callers hold a peer: `WorkerPeer` (push, cancel, drain) or `CoordinatorPeer` (register,
heartbeat, report), one long-lived channel each and one typed method per RPC, so mypy
checks both ends of every hop. Every failure of a call is an `RpcFailed` whose `delivered`
says whether the request may have reached the handler: False only when it certainly did
not (refused, UNAVAILABLE), None when it may have (timeout, reset, any other status).

grpclib 0.4.9 is pinned: on Python >= 3.12 `Server.wait_closed()` waits for connected
clients forever, so `TrackingServer` records transports (a private grpclib hook) and closes
them itself before waiting, with the wait bounded. tests/integration/test_grpc_bridge.py
covers this.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable
from enum import Enum
from ssl import SSLContext
from typing import Any, Protocol, TypeVar

import structlog
import trio
import trio_asyncio
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Server
from structlog.typing import FilteringBoundLogger

from tm.core.addresses import split_address
from tm.proto.gen.taskmaster import v1 as pb

log = structlog.get_logger(__name__)

M = TypeVar("M")
R = TypeVar("R")
M_contra = TypeVar("M_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class Code(Enum):
    INVALID_ARGUMENT = Status.INVALID_ARGUMENT
    NOT_FOUND = Status.NOT_FOUND
    FAILED_PRECONDITION = Status.FAILED_PRECONDITION
    UNAVAILABLE = Status.UNAVAILABLE


class RpcError(Exception):
    """Raised by a handler to answer with a gRPC status instead of a response."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RpcFailed(Exception):
    """A call to a peer failed. `delivered` is False only when the request certainly
    never reached the peer's handler (connection refused, peer answered UNAVAILABLE before
    running it); None means it may or may not have run."""

    def __init__(self, message: str, *, delivered: bool | None, status: str | None = None):
        super().__init__(message)
        self.delivered = delivered
        self.status = status


class TrackingServer(Server):
    """A grpclib Server that can close its client connections (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transports: weakref.WeakSet[Any] = weakref.WeakSet()

    def _protocol_factory(self) -> Any:  # private grpclib hook (0.4.x, pinned)
        protocol = super()._protocol_factory()
        original = protocol.connection_made

        def connection_made(transport: Any) -> None:
            self._transports.add(transport)
            original(transport)

        setattr(protocol, "connection_made", connection_made)  # noqa: B010 - mypy: method
        return protocol

    def close_transports(self) -> None:
        for transport in list(self._transports):
            transport.close()


class WorkerHandlers(Protocol):
    """The trio side of a WorkerService."""

    async def push(self, request: pb.PushRequest, /) -> pb.PushResponse: ...
    async def cancel(self, request: pb.CancelRequest, /) -> pb.CancelResponse: ...
    async def drain(self, request: pb.DrainRequest, /) -> pb.DrainResponse: ...


class CoordinatorHandlers(Protocol):
    """The trio side of a CoordinatorService."""

    async def register(self, request: pb.RegisterRequest, /) -> pb.RegisterResponse: ...
    async def heartbeat(self, request: pb.HeartbeatRequest, /) -> pb.HeartbeatResponse: ...
    async def report(self, request: pb.ReportRequest, /) -> pb.ReportResponse: ...


def worker_service(impl: WorkerHandlers, *, logger: FilteringBoundLogger = log) -> Any:
    """A WorkerService whose methods call `impl`'s (see `bridge`)."""
    return bridge(pb.WorkerServiceBase, impl, logger=logger)


def coordinator_service(
    impl: CoordinatorHandlers, *, logger: FilteringBoundLogger = log
) -> Any:
    """A CoordinatorService whose methods call `impl`'s (see `bridge`)."""
    return bridge(pb.CoordinatorServiceBase, impl, logger=logger)


def bridge(base: type[Any], impl: object, *, logger: FilteringBoundLogger = log) -> Any:
    """An instance of generated service `base` whose RPC methods call `impl`'s trio methods;
    a handler's unexpected exception is logged on `logger`."""
    methods = [
        name
        for name, value in vars(base).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    ]
    attributes: dict[str, Any] = {}
    for name in methods:
        target = getattr(impl, name)

        async def handler(self: Any, message: Any, _target: Any = target, _name: str = name) -> Any:
            try:
                return await trio_asyncio.trio_as_aio(_target)(message)
            except RpcError as exc:
                raise GRPCError(exc.code.value, exc.message) from None
            except GRPCError:
                raise
            except Exception:
                logger.exception("rpc handler failed", action="rpc_error", method=_name)
                raise GRPCError(Status.INTERNAL, f"internal error in {_name}") from None

        attributes[name] = handler
    return type(f"{base.__name__}Bridge", (base,), attributes)()


async def serve_grpc(
    services: list[Any],
    host: str,
    port: int,
    *,
    ssl: SSLContext | None = None,
    grace: float = 2.0,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve bridged `services` on host:port (TLS with `ssl`) until cancelled; reports the
    bound address."""
    server = TrackingServer(services)
    await trio_asyncio.aio_as_trio(server.start)(host, port, ssl=ssl)
    listener: Any = server._server  # an asyncio.Server once started
    bound = listener.sockets[0].getsockname()
    task_status.started((bound[0], bound[1]))
    try:
        await trio.sleep_forever()
    finally:
        server.close()
        server.close_transports()
        with trio.CancelScope(shield=True), trio.move_on_after(grace):
            await trio_asyncio.aio_as_trio(server.wait_closed)()


class _Unary(Protocol[M_contra, R_co]):
    """A unary method of a generated grpclib stub."""

    def __call__(self, message: M_contra, *, timeout: float | None = ...) -> Awaitable[R_co]:
        ...


class Peer:
    """One long-lived channel to a peer's service, used from trio.

    A subclass per service has one typed method per RPC; each raises `RpcFailed`.
    """

    def __init__(self, channel: Channel, address: str) -> None:
        self._channel = channel
        self.address = address

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"

    async def _call(self, method: _Unary[M, R], message: M, timeout: float) -> R:
        try:
            response: R = await trio_asyncio.aio_as_trio(method)(message, timeout=timeout)
        except GRPCError as exc:
            delivered = False if exc.status is Status.UNAVAILABLE else None
            raise RpcFailed(
                f"{self.address}: {exc.status.name} {exc.message}",
                delivered=delivered,
                status=exc.status.name,
            ) from exc
        except (TimeoutError, StreamTerminatedError) as exc:
            # TimeoutError is an OSError: it must be caught before the clause below.
            raise RpcFailed(f"{self.address}: {type(exc).__name__} {exc}", delivered=None) from exc
        except OSError as exc:  # refused, unreachable, reset while connecting
            raise RpcFailed(f"{self.address}: {exc}", delivered=False) from exc
        return response

    def close(self) -> None:
        self._channel.close()


class WorkerPeer(Peer):
    """A worker's WorkerService, as the coordinator calls it."""

    def __init__(self, channel: Channel, address: str) -> None:
        super().__init__(channel, address)
        self._stub = pb.WorkerServiceStub(channel)

    async def push(self, request: pb.PushRequest, *, timeout: float) -> pb.PushResponse:
        return await self._call(self._stub.push, request, timeout)

    async def cancel(self, request: pb.CancelRequest, *, timeout: float) -> pb.CancelResponse:
        return await self._call(self._stub.cancel, request, timeout)

    async def drain(self, request: pb.DrainRequest, *, timeout: float) -> pb.DrainResponse:
        return await self._call(self._stub.drain, request, timeout)


class CoordinatorPeer(Peer):
    """A coordinator's CoordinatorService, as a worker calls it."""

    def __init__(self, channel: Channel, address: str) -> None:
        super().__init__(channel, address)
        self._stub = pb.CoordinatorServiceStub(channel)

    async def register(
        self, request: pb.RegisterRequest, *, timeout: float
    ) -> pb.RegisterResponse:
        return await self._call(self._stub.register, request, timeout)

    async def heartbeat(
        self, request: pb.HeartbeatRequest, *, timeout: float
    ) -> pb.HeartbeatResponse:
        return await self._call(self._stub.heartbeat, request, timeout)

    async def report(self, request: pb.ReportRequest, *, timeout: float) -> pb.ReportResponse:
        return await self._call(self._stub.report, request, timeout)


P = TypeVar("P", bound=Peer)


def connect_peer(peer_class: type[P], address: str, ssl: SSLContext | None = None) -> P:
    """A `peer_class` channel to `address` (connects lazily on first call, reconnects by
    itself), over TLS with `ssl`. Must be called inside `trio_asyncio.open_loop()`; close
    it with `Peer.close()`.
    """
    host, port = split_address(address)
    return peer_class(Channel(host, port, ssl=ssl), address)


@contextlib.asynccontextmanager
async def open_peer(
    peer_class: type[P], address: str, ssl: SSLContext | None = None
) -> AsyncIterator[P]:
    """`connect_peer` for the duration of the block."""
    peer = connect_peer(peer_class, address, ssl)
    try:
        yield peer
    finally:
        peer.close()
