"""Database down: 503 JSON (never 500) while PostgreSQL cannot be reached, /readyz says so,
/healthz does not, and the API resumes by itself when the database is back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from tests.api.conftest import open_api
from tests.api.contract import UNKNOWN_ID, assert_error, assert_json, each_case, task_response
from tests.pgserver import admin
from tm.settings import SchedulerSettings


class Unpluggable:
    """A TCP forwarder to PostgreSQL that a test can unplug (open connections are cut and
    new ones refused, as when the server is down) and plug back in on the same port."""

    def __init__(self, nursery: trio.Nursery, target_host: str, target_port: int) -> None:
        self._nursery = nursery
        self._target = (target_host, target_port)
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def plug(self) -> None:
        self._scope = await self._nursery.start(self._serve)

    def unplug(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _serve(self, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as handlers:
                task_status.started(scope)
                await trio.serve_listeners(self._forward, listeners, handler_nursery=handlers)

    async def _forward(self, client: trio.SocketStream) -> None:
        async with client:
            upstream = await trio.open_tcp_stream(*self._target)
            async with upstream, trio.open_nursery() as pipes:
                pipes.start_soon(self._pipe, client, upstream, pipes.cancel_scope)
                pipes.start_soon(self._pipe, upstream, client, pipes.cancel_scope)

    @staticmethod
    async def _pipe(
        source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in source:
                await sink.send_all(data)
        both.cancel()


@contextlib.asynccontextmanager
async def open_unpluggable(database_url: str) -> AsyncIterator[tuple[Unpluggable, str]]:
    """A plugged-in forwarder to `database_url`'s server, and the URL that goes through it."""
    parts = urlsplit(database_url)
    async with trio.open_nursery() as nursery:
        proxy = Unpluggable(nursery, parts.hostname or "127.0.0.1", parts.port or 5432)
        await proxy.plug()
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
        nursery.cancel_scope.cancel()


# Every route that needs the database, with a body where it takes one.
NEEDS_DATABASE: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "POST /tasks": ("POST", "/tasks", {"command": "echo down"}),
    "POST /tasks batch": ("POST", "/tasks", {"tasks": [{"command": "echo down"}]}),
    "POST /schedule": ("POST", "/schedule", {"command": "echo down"}),
    "GET /status": ("GET", f"/status?task_id={UNKNOWN_ID}", None),
    "GET /tasks": ("GET", "/tasks", None),
    "GET /tasks/<id>": ("GET", f"/tasks/{UNKNOWN_ID}", None),
    "POST /tasks/<id>/cancel": ("POST", f"/tasks/{UNKNOWN_ID}/cancel", None),
    "GET /workers": ("GET", "/workers", None),
}


async def assert_down(api: httpx.AsyncClient) -> None:
    async def check(route: tuple[str, str, dict[str, Any] | None]) -> None:
        method, path, body = route
        assert_error(await api.request(method, path, json=body), 503)

    await each_case(NEEDS_DATABASE, check)
    assert_error(await api.get("/readyz"), 503)
    healthz = await api.get("/healthz")  # the process is up
    assert healthz.status_code == 200
    assert_json(healthz)


async def assert_back_by_itself(api: httpx.AsyncClient, within_s: float = 15) -> None:
    with trio.move_on_after(within_s):
        while (await api.get("/readyz")).status_code != 200:
            await trio.sleep(0.1)
    ready = await api.get("/readyz")
    assert ready.status_code == 200, f"not ready {within_s} s after the database came back"
    task = task_response(await api.post("/tasks", json={"command": "echo back"}), 201)
    assert task_response(await api.get(f"/tasks/{task['task_id']}"), 200) == task


async def test_database_unreachable_is_503_and_recovers(shared_database_url: str) -> None:
    with trio.fail_after(45):
        async with (
            open_unpluggable(shared_database_url) as (proxy, url),
            open_api(SchedulerSettings(database_url=url)) as api,
        ):
            before = task_response(await api.post("/tasks", json={"command": "x"}), 201)

            proxy.unplug()
            await assert_down(api)
            await assert_down(api)  # and it stays a clean 503, request after request

            await proxy.plug()
            await assert_back_by_itself(api)
            fetched = await api.get(f"/tasks/{before['task_id']}")
            assert task_response(fetched, 200) == before


async def run_admin(server_url: str, *statements: str) -> None:
    """Statements on the server's `postgres` database, from a thread (asyncpg on asyncio)."""
    with trio.CancelScope(shield=True), trio.fail_after(20):  # also runs during cleanup
        await trio.to_thread.run_sync(admin, server_url, *statements)


def terminate_sessions(name: str) -> str:
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


async def test_database_refusing_connections_is_503(database_url: str, pg_server_url: str) -> None:
    """The server is up but the database refuses connections (SQLSTATE 55000, as with
    ALLOW_CONNECTIONS false; 57P03 while it starts up is similar)."""
    name = urlsplit(database_url).path.lstrip("/")
    with trio.fail_after(45):
        async with open_api(SchedulerSettings(database_url=database_url)) as api:
            task_response(await api.post("/tasks", json={"command": "x"}), 201)
            try:
                await run_admin(
                    pg_server_url,
                    f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
                    terminate_sessions(name),
                )
                await assert_down(api)
            finally:
                await run_admin(pg_server_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            await assert_back_by_itself(api)


async def test_backends_killed_is_not_a_500(database_url: str, pg_server_url: str) -> None:
    """PostgreSQL ends the pool's sessions (admin shutdown of the backends, failover):
    requests right after are a 503 at worst, then the API goes on by itself."""
    name = urlsplit(database_url).path.lstrip("/")
    with trio.fail_after(45):
        async with open_api(SchedulerSettings(database_url=database_url)) as api:
            task_response(await api.post("/tasks", json={"command": "x"}), 201)
            await run_admin(pg_server_url, terminate_sessions(name))
            for _ in range(3):
                response = await api.post("/tasks", json={"command": "y"})
                assert response.status_code in (201, 503), response.text
                if response.status_code == 503:
                    assert_error(response, 503)
            await assert_back_by_itself(api)
