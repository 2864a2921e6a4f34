"""Fixtures for the HTTP contract tests: the real scheduler, in-process, on real PostgreSQL.

`open_api(settings)` runs `serve_scheduler` on 127.0.0.1:0 inside `trio_asyncio.open_loop()`
in the calling task and yields an httpx client bound to it; leaving cancels the server.

Starting a server costs 0.1-0.3 s, so tests of many small cases (bad bodies, bad ids,
bad routes) run them all against one server with `contract.each_case`, which reports every
failing case by name.

Two databases:
* `api` serves one database shared by the whole session. Creating and dropping a database
  costs up to a second on a busy server, so tests that only look at tasks they created
  themselves (by id) or at rejected requests use this one.
* `fresh_api` serves the per-test database of tests/conftest.py (`database_url`), for tests
  that look at the whole table (counts, listing, pagination, "nothing was stored").
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator, Iterator
from functools import partial

import httpx
import pytest
import structlog
import trio
import trio_asyncio

pytest.register_assert_rewrite("tests.api.contract")

from tests.pgserver import admin, new_database_name, with_database  # noqa: E402
from tm.scheduler.service import serve_scheduler  # noqa: E402
from tm.settings import SchedulerSettings  # noqa: E402

START_TIMEOUT_S = 20
# Built once: loading the CA bundle costs ~0.1 s per client, and every test has a client
# (the servers speak plain HTTP, so it is never used).
_TLS = ssl.create_default_context()


@contextlib.asynccontextmanager
async def open_api(settings: SchedulerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the scheduler with `settings` (http_addr forced to port 0); yield a client."""
    settings = dataclasses.replace(settings, http_addr="127.0.0.1:0")
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        with trio.fail_after(START_TIMEOUT_S):
            addr = await nursery.start(partial(serve_scheduler, settings))
        try:
            async with httpx.AsyncClient(
                base_url=f"http://{addr}", timeout=30, verify=_TLS
            ) as client:
                yield client
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture(scope="package", autouse=True)
def plain_tracebacks() -> Iterator[None]:
    """Log exceptions as plain text while these tests run, as `tm.logs` does in production.

    structlog's unconfigured default renders them with rich, which takes 3-5 s per 500 on a
    busy machine: a test of a failing route would spend its time formatting tracebacks.
    """
    previous = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


@pytest.fixture(scope="session")
def shared_database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    name = new_database_name("tm_api_shared")
    admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    try:
        yield with_database(pg_server_url, name)
    finally:
        admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def api(shared_database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_api(SchedulerSettings(database_url=shared_database_url)) as client:
        yield client


@pytest.fixture
async def fresh_api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_api(SchedulerSettings(database_url=database_url)) as client:
        yield client
