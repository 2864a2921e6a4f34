"""tm.scheduler.ingest.GroupCommit against a real database: every request of a group is
answered in its own order and durable, groups respect max_rows, one bad request fails
alone, and an unreachable database fails the whole group without acknowledging anything.

Grouping is made deterministic where a test depends on it: requests are queued (each
`insert` sends its request into the channel at once) before `GroupCommit.run` starts, so
`run` finds them all waiting.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
import trio
import trio.testing

from tests.integration.helpers import insert, new_task, open_db
from tm.aio.pg import Database, DatabaseUnavailable
from tm.core.tasks import NewTask
from tm.db import tasks as db_tasks
from tm.scheduler.ingest import GroupCommit

InsertTasks = Callable[[Database, Sequence[NewTask]], Awaitable[list[db_tasks.Inserted]]]


def recording_insert(
    monkeypatch: pytest.MonkeyPatch, calls: list[list[NewTask]]
) -> InsertTasks:
    """Replace `db_tasks.insert_tasks` (as GroupCommit calls it) by a wrapper that records
    each statement's tasks and delegates to the real one; returns the real one."""
    real = db_tasks.insert_tasks

    async def wrapper(db: Database, tasks: Sequence[NewTask]) -> list[db_tasks.Inserted]:
        calls.append(list(tasks))
        return await real(db, tasks)

    monkeypatch.setattr(db_tasks, "insert_tasks", wrapper)
    return real


def requests(count: int, *, low: int = 1, high: int = 30, seed: int = 7) -> list[list[NewTask]]:
    rng = random.Random(seed)
    return [
        [new_task(f"r{r} t{i}") for i in range(rng.randint(low, high))] for r in range(count)
    ]


async def stored_commands(db: Database, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await db.fetch(
        "SELECT task_id, command FROM tasks WHERE task_id = ANY($1::uuid[])", list(ids)
    )
    return {r["task_id"]: r["command"] for r in rows}


async def test_concurrent_requests_are_grouped_and_every_one_is_durable(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    batches = requests(200)
    answers: dict[int, list[db_tasks.Inserted]] = {}
    with trio.fail_after(30):
        async with open_db(db_url) as db, trio.open_nursery() as outer:
            gc = GroupCommit(db)
            outer.start_soon(gc.run)  # running before the requests: groups form by load

            async def one(index: int) -> None:
                answers[index] = await gc.insert(batches[index])

            async with trio.open_nursery() as nursery:
                for index in range(len(batches)):
                    nursery.start_soon(one, index)
            outer.cancel_scope.cancel()

            assert sorted(answers) == list(range(len(batches)))
            total = sum(len(b) for b in batches)
            for index, tasks in enumerate(batches):
                got = answers[index]
                assert [i.row["task_id"] for i in got] == [t.task_id for t in tasks]
                assert [i.row["command"] for i in got] == [t.command for t in tasks]
                assert all(i.created for i in got)
            # Durable: every acknowledged task is in the table, with its command.
            everything = [t for b in batches for t in b]
            stored = await stored_commands(db, [t.task_id for t in everything])
            assert stored == {t.task_id: t.command for t in everything}
            assert await db.fetchval("SELECT count(*) FROM tasks") == total
            # Grouped: fewer statements than requests; the counters agree with the calls.
            assert gc.rows == total
            assert gc.groups == len(calls) < len(batches)
            assert sum(len(c) for c in calls) == total
            assert repr(gc).startswith(f"<GroupCommit [{gc.groups} groups")


async def test_a_lone_request_is_flushed_at_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timer: one request under no load is one statement, answered without waiting
    for company."""
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    with trio.fail_after(20):
        async with open_db(db_url) as db, trio.open_nursery() as nursery:
            gc = GroupCommit(db)
            nursery.start_soon(gc.run)
            for round_ in range(3):
                task = new_task(f"alone {round_}")
                [result] = await gc.insert([task])
                assert result.row["task_id"] == task.task_id
                assert len(calls) == round_ + 1 and calls[-1] == [task]
            assert (gc.groups, gc.rows) == (3, 3)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("flushes", [1, 2, 3])
async def test_at_most_flushes_statements_are_in_flight(
    db_url: str, monkeypatch: pytest.MonkeyPatch, flushes: int
) -> None:
    """While statements wait for the database, the next groups are written — never more
    than `flushes` at once — and requests queued behind them are still grouped."""
    real = db_tasks.insert_tasks
    in_flight: list[int] = [0]
    peak: list[int] = [0]
    calls: list[int] = []
    release = trio.Event()

    async def slow(db: Database, tasks: Sequence[NewTask]) -> list[db_tasks.Inserted]:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        calls.append(len(tasks))
        try:
            await release.wait()  # the database is slow until every request is queued
            return await real(db, tasks)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(db_tasks, "insert_tasks", slow)
    batches = requests(30, low=1, high=3, seed=11)
    answers: dict[int, list[db_tasks.Inserted]] = {}
    with trio.fail_after(20):
        async with open_db(db_url) as db, trio.open_nursery() as outer:
            gc = GroupCommit(db, flushes=flushes)
            outer.start_soon(gc.run)

            async def one(index: int) -> None:
                answers[index] = await gc.insert(batches[index])

            async with trio.open_nursery() as nursery:
                for index in range(len(batches)):
                    nursery.start_soon(one, index)
                    await trio.testing.wait_all_tasks_blocked()
                # every request is queued or in a statement; `flushes` statements wait
                assert in_flight[0] == flushes
                release.set()
            outer.cancel_scope.cancel()

            assert peak[0] == flushes
            # the first `flushes` requests went alone; the rest waited and were grouped
            assert calls[:flushes] == [len(b) for b in batches[:flushes]]
            assert len(calls) < len(batches)
            assert sorted(answers) == list(range(len(batches)))
            for index, tasks in enumerate(batches):
                assert [i.row["task_id"] for i in answers[index]] == [t.task_id for t in tasks]
            assert await db.fetchval("SELECT count(*) FROM tasks") == sum(map(len, batches))


async def test_same_idempotency_key_in_one_group_makes_one_task(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one key, grouped into one statement, behave as if sequential:
    the first creates the task, the second gets it back (created False)."""
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    first = [new_task("a"), new_task("keyed first", idempotency_key="same")]
    second = [new_task("keyed second", idempotency_key="same"), new_task("b")]
    answers: dict[str, list[db_tasks.Inserted]] = {}
    with trio.fail_after(20):
        async with open_db(db_url) as db, trio.open_nursery() as nursery:
            gc = GroupCommit(db)

            async def one(name: str, tasks: list[NewTask]) -> None:
                answers[name] = await gc.insert(tasks)

            async with trio.open_nursery() as requests_:
                requests_.start_soon(one, "first", first)
                await trio.testing.wait_all_tasks_blocked()
                requests_.start_soon(one, "second", second)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(gc.run)
            nursery.cancel_scope.cancel()

            assert len(calls) == 1  # really one statement
            assert [i.created for i in answers["first"]] == [True, True]
            assert [i.created for i in answers["second"]] == [False, True]
            keyed = answers["first"][1].row["task_id"]
            assert keyed == first[1].task_id
            assert answers["second"][0].row["task_id"] == keyed
            assert answers["second"][0].row["command"] == "keyed first"
            assert await db.fetchval("SELECT count(*) FROM tasks") == 3


async def queue_then_run(
    gc: GroupCommit, batches: Sequence[Sequence[NewTask]]
) -> list[list[db_tasks.Inserted] | BaseException]:
    """Queue every request (in order) before `gc.run` starts; each one's answer or error."""
    outcomes: list[list[db_tasks.Inserted] | BaseException] = [
        RuntimeError("unanswered") for _ in batches
    ]
    async with trio.open_nursery() as nursery:

        async def one(index: int) -> None:
            try:
                outcomes[index] = await gc.insert(batches[index])
            except Exception as exc:
                outcomes[index] = exc

        async with trio.open_nursery() as requests_:
            for index in range(len(batches)):
                requests_.start_soon(one, index)
                await trio.testing.wait_all_tasks_blocked()  # queued in this order
            nursery.start_soon(gc.run)
        nursery.cancel_scope.cancel()
    return outcomes


async def test_max_rows_bounds_every_statement(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    max_rows = 50
    batches = requests(60, low=1, high=30, seed=11)
    batches.insert(20, [new_task(f"big {i}") for i in range(80)])  # alone over the limit
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            gc = GroupCommit(db, max_rows=max_rows)
            outcomes = await queue_then_run(gc, batches)
            for tasks, outcome in zip(batches, outcomes, strict=True):
                assert isinstance(outcome, list)
                assert [i.row["task_id"] for i in outcome] == [t.task_id for t in tasks]
            assert sum(len(c) for c in calls) == sum(len(b) for b in batches) == gc.rows
            assert len(calls) < len(batches)  # it did group
            # No statement went over the limit, except the oversized request, alone.
            sizes = [len(c) for c in calls]
            over = [size for size in sizes if size > max_rows]
            assert over == [80], f"statement sizes {sizes} with max_rows {max_rows}"
            assert batches[20] in calls


async def test_groups_are_whole_requests_and_stop_growing_at_max_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What holds today: a request is never split across statements, and a group takes no
    further request once it has max_rows rows (so it exceeds max_rows by less than one
    request)."""
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    max_rows = 50
    batches = requests(60, low=1, high=30, seed=11)
    batches.insert(20, [new_task(f"big {i}") for i in range(80)])
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            gc = GroupCommit(db, max_rows=max_rows)
            outcomes = await queue_then_run(gc, batches)
            assert all(isinstance(o, list) for o in outcomes)
            # Statements are consecutive runs of whole requests, in queue order.
            index = 0
            for call in calls:
                taken: list[list[NewTask]] = []
                while sum(len(t) for t in taken) < len(call):
                    taken.append(batches[index])
                    index += 1
                assert call == [t for request in taken for t in request]
                # the group stopped as soon as it reached max_rows
                assert sum(len(t) for t in taken[:-1]) < max_rows
            assert index == len(batches)
            assert len(calls) < len(batches)
            stored = await stored_commands(db, [t.task_id for b in batches for t in b])
            assert len(stored) == sum(len(b) for b in batches)


@pytest.mark.parametrize("sizes", [(1, 5), (8, 12)], ids=["insert", "copy"])
async def test_one_bad_request_fails_alone(
    db_url: str, monkeypatch: pytest.MonkeyPatch, sizes: tuple[int, int]
) -> None:
    """A request the database refuses (here: a task id that already exists, which input
    validation cannot know) fails its group's statement (an INSERT, or a COPY for a group
    of COPY_MIN_TASKS or more); the group is then inserted request by request, so only the
    bad request raises and every other one is stored."""
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            [existing] = await insert(db, [new_task("already here")])
            calls.clear()
            batches = requests(12, low=sizes[0], high=sizes[1], seed=3)
            bad = [new_task("bad neighbour"), NewTask(
                task_id=existing, command="duplicate id", scheduled_at=None)]
            batches.insert(5, bad)
            grouped = sum(len(b) for b in batches)
            assert (grouped >= db_tasks.COPY_MIN_TASKS) == (sizes[0] > 1)
            gc = GroupCommit(db)
            outcomes = await queue_then_run(gc, batches)

            error = outcomes[5]
            assert isinstance(error, asyncpg.UniqueViolationError)
            for index, (tasks, outcome) in enumerate(zip(batches, outcomes, strict=True)):
                if index == 5:
                    continue
                assert isinstance(outcome, list), outcome
                assert [i.row["task_id"] for i in outcome] == [t.task_id for t in tasks]
            # One grouped attempt, then one statement per request.
            assert len(calls[0]) == sum(len(b) for b in batches)
            assert calls[1:] == batches
            good = [t for i, b in enumerate(batches) if i != 5 for t in b]
            stored = await stored_commands(db, [t.task_id for t in good])
            assert stored == {t.task_id: t.command for t in good}
            # Nothing of the bad request was stored (its statement is atomic), and the
            # task it collided with is untouched.
            assert await db.fetchval(
                "SELECT count(*) FROM tasks WHERE task_id = $1", bad[0].task_id) == 0
            assert await db.fetchval(
                "SELECT command FROM tasks WHERE task_id = $1", existing) == "already here"
            assert await db.fetchval("SELECT count(*) FROM tasks") == len(good) + 1
            assert gc.rows == len(good)


async def test_a_refused_group_of_one_is_that_requests_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[NewTask]] = []
    recording_insert(monkeypatch, calls)
    with trio.fail_after(20):
        async with open_db(db_url) as db, trio.open_nursery() as nursery:
            gc = GroupCommit(db)
            nursery.start_soon(gc.run)
            with pytest.raises(asyncpg.CheckViolationError):
                await gc.insert([NewTask(uuid.uuid4(), "ok", None, max_attempts=0)])
            assert len(calls) == 1  # not retried: it was alone
            # and the loop keeps serving
            [ok] = await gc.insert([new_task("after")])
            assert ok.created
            assert (gc.groups, gc.rows) == (1, 1)
            nursery.cancel_scope.cancel()


async def test_database_unavailable_fails_the_whole_group_and_acknowledges_nothing(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[NewTask]] = []
    real = recording_insert(monkeypatch, calls)

    async def unavailable(db: Database, tasks: Sequence[NewTask]) -> Any:
        calls.append(list(tasks))
        raise DatabaseUnavailable("database unavailable: test outage")

    monkeypatch.setattr(db_tasks, "insert_tasks", unavailable)
    batches = requests(25, low=1, high=10, seed=5)
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            gc = GroupCommit(db)
            outcomes = await queue_then_run(gc, batches)
            assert all(isinstance(o, DatabaseUnavailable) for o in outcomes), outcomes
            # One statement for the whole group; not retried request by request (an outage
            # would only make each of them wait for it again).
            assert len(calls) == 1
            assert calls[0] == [t for b in batches for t in b]
            assert (gc.groups, gc.rows) == (0, 0)
            assert await db.fetchval("SELECT count(*) FROM tasks") == 0

            # The database is back: the same GroupCommit serves again.
            monkeypatch.setattr(db_tasks, "insert_tasks", real)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gc.run)
                task = new_task("after the outage")
                [ok] = await gc.insert([task])
                assert ok.row["task_id"] == task.task_id
                nursery.cancel_scope.cancel()
            assert await db.fetchval("SELECT count(*) FROM tasks") == 1
