"""tm.aio.pg.Database.run: work that PostgreSQL aborts as a deadlock is run again."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import trio

import tm.aio.pg
from tests.integration.helpers import open_db
from tm.aio.pg import Connection


async def test_a_deadlocked_transaction_is_run_again(db_url: str) -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL aborts one as a
    deadlock; it runs again once the other has committed, and both updates are kept."""
    runs: list[str] = []
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            await db.execute("CREATE TABLE pair (id int PRIMARY KEY, seen text[] NOT NULL)")
            await db.execute("INSERT INTO pair VALUES (1, '{}'), (2, '{}')")
            first_locked, second_locked = asyncio.Event(), asyncio.Event()

            def locking(name: str, order: tuple[int, int], mine: asyncio.Event,
                        theirs: asyncio.Event) -> Any:
                async def work(conn: Connection) -> None:
                    runs.append(name)
                    await conn.execute("SET LOCAL deadlock_timeout = '50ms'")
                    await conn.execute(
                        "UPDATE pair SET seen = seen || $1 WHERE id = $2", [name], order[0])
                    mine.set()
                    await theirs.wait()  # both hold their first row before either goes on
                    await conn.execute(
                        "UPDATE pair SET seen = seen || $1 WHERE id = $2", [name], order[1])
                return work

            async with trio.open_nursery() as nursery:
                nursery.start_soon(db.transaction, locking("a", (1, 2), first_locked,
                                                           second_locked))
                nursery.start_soon(db.transaction, locking("b", (2, 1), second_locked,
                                                           first_locked))
            # one of them ran twice: the first run aborted, the second went through
            assert sorted(runs) in (["a", "a", "b"], ["a", "b", "b"])
            rows = {r["id"]: sorted(r["seen"]) for r in await db.fetch("SELECT * FROM pair")}
            assert rows == {1: ["a", "b"], 2: ["a", "b"]}


async def test_a_conflict_that_persists_is_raised_after_the_last_try(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def always_deadlocked(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("SELECT 1")
        raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")

    with trio.fail_after(20):
        async with open_db(db_url) as db:
            with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
                await db.run(always_deadlocked)
    assert calls == tm.aio.pg.CONFLICT_TRIES
