"""asyncpg behind a trio-shaped API.

`open_database` yields a `Database` whose methods each cross the trio/asyncio bridge once.
Work that needs several statements (a transaction) is written as an asyncio-side coroutine
taking a connection and passed to `Database.run`, so it still crosses once.

Any failure to reach PostgreSQL surfaces as `DatabaseUnavailable`, which the services turn
into 503s and retries, never a crash.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import structlog
import trio
import trio_asyncio
from asyncpg.pgproto import pgproto
from structlog.typing import FilteringBoundLogger

from tm.retry import Backoff, retry_forever

log = structlog.get_logger(__name__)

# asyncpg's UUID type, the one it returns for uuid columns: a uuid.UUID written in C, made
# from 16 bytes 3x faster than uuid.UUID and formatted 14x faster (batch ingest makes and
# formats 10,000 per request).
uuid_from_bytes: Callable[[bytes], uuid.UUID] = pgproto.UUID

T = TypeVar("T")


class Connection(Protocol):
    """The part of asyncpg.Connection the project uses (for typing tm/db)."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    async def execute(self, query: str, *args: Any) -> str: ...
    def transaction(self) -> Any: ...
    async def copy_records_to_table(
        self, table_name: str, *, records: Iterable[Sequence[Any]], columns: Sequence[str]
    ) -> str: ...


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached right now (down, restarting, network)."""


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
    # "database does not allow connections", a dropped database, a revoked login: the
    # database is unusable for now, which is not the client's fault.
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    # What a query on a connection the server just killed can raise mid-operation.
    asyncpg.exceptions.InternalClientError,
)


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"database unavailable: {exc}")


UniqueViolation = asyncpg.exceptions.UniqueViolationError

# A deadlock (40P01) or a serialization failure (40001) aborts the statement or transaction
# that hit it, and running the same work again is what PostgreSQL advises: `Database.run`
# does, a few times.
_CONFLICT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
CONFLICT_TRIES = 3


class Database:
    """A pool of connections. Use from trio inside `trio_asyncio.open_loop()`."""

    def __init__(self, pool: Any, url: str, log: FilteringBoundLogger = log) -> None:
        self._pool = pool
        self.url = url
        self._log = log

    def __repr__(self) -> str:
        size = self._pool.get_size()
        idle = self._pool.get_idle_size()
        return f"<Database [connections: {size - idle} busy, {idle} idle]>"

    def statistics(self) -> dict[str, int]:
        return {"size": self._pool.get_size(), "idle": self._pool.get_idle_size()}

    async def run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run an asyncio-side `work(conn)` on a pooled connection; one bridge crossing.

        `work` is run again (up to CONFLICT_TRIES times in all) when PostgreSQL aborts it as
        a deadlock or a serialization failure, so it must be safe to repeat after one: a
        single statement, one transaction, or reads after its one write.
        """

        async def on_asyncio() -> T:
            async with self._pool.acquire() as conn:
                return await work(conn)

        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                return await trio_asyncio.aio_as_trio(on_asyncio)()  # type: ignore[no-any-return]
            except _UNAVAILABLE as exc:
                raise _unavailable(exc) from exc
            except _CONFLICT as exc:
                if attempt == CONFLICT_TRIES:
                    raise
                self._log.warning("transaction conflict, running it again",
                                  action="db_conflict", error=str(exc), attempt=attempt)
                await trio.sleep(random.uniform(0, 0.01 * attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self.run(lambda conn: conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self.run(lambda conn: conn.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.run(lambda conn: conn.fetchval(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        return await self.run(lambda conn: conn.execute(query, *args))

    async def transaction(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `work(conn)` inside one transaction; one bridge crossing."""

        async def in_transaction(conn: Connection) -> T:
            async with conn.transaction():
                return await work(conn)

        return await self.run(in_transaction)

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[trio.MemoryReceiveChannel[str]]:
        """Payloads of NOTIFY on `channel`, on a dedicated connection, as a trio channel.

        If the connection breaks, the channel is closed: callers treat that as "rescan".
        """
        send, receive = trio.open_memory_channel[str](1024)

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                send.send_nowait(payload)

        def on_terminate(_conn: Any) -> None:
            send.close()

        async def connect() -> Any:
            conn = await self._pool.acquire()
            conn.add_termination_listener(on_terminate)
            await conn.add_listener(channel, on_notify)
            return conn

        try:
            conn = await trio_asyncio.aio_as_trio(connect)()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        try:
            yield receive
        finally:
            send.close()

            async def disconnect() -> None:
                try:
                    await conn.remove_listener(channel, on_notify)
                except Exception:  # a broken connection: drop it, the pool makes a new one
                    conn.terminate()
                await self._pool.release(conn)

            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(2),
                contextlib.suppress(*_UNAVAILABLE),
            ):
                await trio_asyncio.aio_as_trio(disconnect)()


async def _keep_session(conn: Any) -> None:
    """Pool `reset` hook: roll back a transaction left open (cancelled mid-way), else
    nothing.

    asyncpg's default reset costs a round trip on every release (RESET ALL, UNLISTEN *,
    ...). Our connections never change session state: advisory locks are
    transaction-scoped and `listen` removes its listener itself.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _create_pool(url: str, min_size: int, max_size: int) -> Any:
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        reset=_keep_session,
        command_timeout=30,
        max_inactive_connection_lifetime=60,
        server_settings={
            "application_name": "taskmaster",
            "timezone": "UTC",
            # JIT compiles a plan in ~0.2 s when its cost estimate is high, which a short
            # query over a big table can have: never worth it for our statements.
            "jit": "off",
            # Plan every execution for its parameters. After five runs of a prepared
            # statement PostgreSQL may switch to one generic plan; for the claim, over a
            # table of 1,000,000 finished tasks, that plan took 108 ms where a custom one
            # takes 25 ms (drain -30%). Planning our statements costs well under 1 ms.
            "plan_cache_mode": "force_custom_plan",
        },
    )


async def _create_database(url: str) -> str:
    """CREATE DATABASE for `url`'s database, connecting to the server's `postgres` db."""
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        with contextlib.suppress(asyncpg.exceptions.DuplicateDatabaseError):
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()
    return name


async def _connect(
    url: str, min_size: int, max_size: int, *, create: bool, log: FilteringBoundLogger
) -> Any:
    """One try at a pool to `url`: if the server is up but the database does not exist, it
    is created (when `create`) and tried once more. Raises DatabaseUnavailable."""
    try:
        return await trio_asyncio.aio_as_trio(_create_pool)(url, min_size, max_size)
    except asyncpg.exceptions.InvalidCatalogNameError as exc:
        if not create:
            raise _unavailable(exc) from exc
    except _UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    try:
        name = await trio_asyncio.aio_as_trio(_create_database)(url)
    except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
        raise _unavailable(exc) from exc
    log.info("database created", action="db_created", database=name)
    return await _connect(url, min_size, max_size, create=False, log=log)


@contextlib.asynccontextmanager
async def open_database(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    retry_for: float = float("inf"),
    create: bool = True,
    log: FilteringBoundLogger = log,
) -> AsyncIterator[Database]:
    """A connection pool to `url`, waiting (with backoff, logged on `log`) while PostgreSQL
    is down.

    If the server is up but the database does not exist, it is created (when `create`),
    so a first start against a fresh server needs no manual step.

    Gives up with DatabaseUnavailable after `retry_for` seconds. Must be entered inside
    `trio_asyncio.open_loop()`.
    """
    tries = 0

    async def connect() -> Any:
        nonlocal tries
        tries += 1
        return await _connect(url, min_size, max_size, create=create, log=log)

    pool = await retry_forever(
        connect, retry_on=DatabaseUnavailable, backoff=Backoff(base=0.2, cap=5.0), log=log,
        event="database unreachable, retrying", action="db_retry",
        give_up_at=trio.current_time() + retry_for,
    )
    if tries > 1:
        log.info("database reachable", action="db_connected")
    try:
        yield Database(pool, url, log)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await trio_asyncio.aio_as_trio(pool.close)()
            except Exception:
                pool.terminate()
