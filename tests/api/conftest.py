"""Fixtures for the HTTP contract tests: the real scheduler, in-process, on a fresh database.

`api` is an httpx client bound to a scheduler started by `serve_scheduler` on
127.0.0.1:0 inside `trio_asyncio.open_loop()`; the server is cancelled when the test ends.
Tests that need special settings (an API token, a database behind a proxy) use
`open_api(...)` directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
import trio_asyncio

from tm.scheduler.service import serve_scheduler
from tm.settings import SchedulerSettings

START_TIMEOUT_S = 20


@contextlib.asynccontextmanager
async def open_api(settings: SchedulerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the scheduler with `settings` (http_addr forced to port 0); yield a client."""
    settings = SchedulerSettings(
        database_url=settings.database_url,
        http_addr="127.0.0.1:0",
        api_token=settings.api_token,
        worker_timeout_s=settings.worker_timeout_s,
        pool_size=settings.pool_size,
    )
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        with trio.fail_after(START_TIMEOUT_S):
            addr = await nursery.start(partial(serve_scheduler, settings))
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as client:
            yield client
        nursery.cancel_scope.cancel()


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_api(SchedulerSettings(database_url=database_url)) as client:
        yield client
