"""Helpers for integration tests against a real PostgreSQL (databases: tests/conftest.py).

Every test opens its own trio-asyncio loop and pool with `open_db`, inside `trio.fail_after`,
so nothing is shared between tests and nothing can hang.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import trio_asyncio

from tm.aio.pg import Database, open_database
from tm.core.tasks import NewTask
from tm.db import dispatch
from tm.db import tasks as db_tasks


@contextlib.asynccontextmanager
async def open_db(url: str, **kwargs: Any) -> AsyncIterator[Database]:
    """A trio-asyncio loop and a pool on `url`, for the duration of the block."""
    async with trio_asyncio.open_loop(), open_database(url, retry_for=5, **kwargs) as db:
        yield db


async def db_now(db: Database) -> datetime:
    """The database's clock (the one every query compares with)."""
    value: datetime = await db.fetchval("SELECT clock_timestamp()")
    return value


def new_task(
    command: str = "echo hi",
    scheduled_at: datetime | None = None,
    **kwargs: Any,
) -> NewTask:
    return NewTask(task_id=uuid.uuid4(), command=command, scheduled_at=scheduled_at, **kwargs)


async def insert(db: Database, tasks: Sequence[NewTask]) -> list[uuid.UUID]:
    """Insert `tasks`; their ids in input order."""
    inserted = await db_tasks.insert_tasks(db, tasks)
    return [i.row["task_id"] for i in inserted]


async def insert_due(
    db: Database, count: int, *, ago: timedelta = timedelta(minutes=1), **kwargs: Any
) -> list[uuid.UUID]:
    """`count` tasks due in the past, the i-th due one microsecond after the (i-1)-th."""
    start = await db_now(db) - ago
    tasks = [
        new_task(f"task {i}", start + timedelta(microseconds=i), **kwargs) for i in range(count)
    ]
    return await insert(db, tasks)


async def task_row(db: Database, task_id: uuid.UUID) -> Any:
    """Every column of one task (including the internal ones the API does not show)."""
    return await db.fetchrow("SELECT * FROM tasks WHERE task_id = $1", task_id)


async def claim_one(
    db: Database, task_id: uuid.UUID, worker_id: str = "w1", *, lease_s: float = 30.0
) -> dispatch.Claimed:
    """Claim exactly `task_id` (it must be the only due task) for `worker_id`."""
    claimed = await dispatch.claim(db, [worker_id], "c1", lease_s)
    assert [c.task_id for c in claimed] == [task_id]
    return claimed[0]
