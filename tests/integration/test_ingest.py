"""insert_tasks (idempotency, default times), list_tasks (keyset pagination), cancel_task."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from typing import Any

import pytest
import trio

from tests.integration.helpers import (
    claim_one,
    db_now,
    insert,
    insert_due,
    new_task,
    open_db,
    task_row,
)
from tm.aio.pg import open_database
from tm.core.reports import Report, ReportKind
from tm.core.tasks import TASK_FIELDS, InvalidInput, Status
from tm.core.timefmt import parse_time
from tm.db import dispatch, notify, reports
from tm.db import tasks as db_tasks


async def test_same_idempotency_key_returns_existing_task(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            first = new_task("echo first", idempotency_key="k-1", max_attempts=2)
            [one] = await db_tasks.insert_tasks(db, [first])
            assert one.created
            assert one.row["task_id"] == first.task_id
            assert one.row["command"] == "echo first"
            assert set(TASK_FIELDS) <= set(one.row.keys())

            repeat = new_task("echo second", idempotency_key="k-1", max_attempts=5)
            [two] = await db_tasks.insert_tasks(db, [repeat])
            assert not two.created
            assert two.row["task_id"] == first.task_id
            assert two.row["command"] == "echo first"
            assert two.row["max_attempts"] == 2
            assert await db.fetchval("SELECT count(*) FROM tasks") == 1
            assert await db_tasks.get_task(db, repeat.task_id) is None


async def test_duplicate_keys_in_one_batch_map_to_one_task(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            [old] = await db_tasks.insert_tasks(db, [new_task("old", idempotency_key="known")])
            batch = [
                new_task("a", idempotency_key="dup"),
                new_task("b"),
                new_task("c", idempotency_key="dup"),
                new_task("d", idempotency_key="known"),
                new_task("e"),
            ]
            out = await db_tasks.insert_tasks(db, batch)
            assert [o.created for o in out] == [True, True, False, False, True]
            ids = [o.row["task_id"] for o in out]
            assert ids[0] == ids[2] == batch[0].task_id
            assert ids[3] == old.row["task_id"]
            assert out[2].row["command"] == "a"
            assert ids[1] == batch[1].task_id and ids[4] == batch[4].task_id
            assert await db.fetchval("SELECT count(*) FROM tasks") == 4  # old, a, b, e


async def test_concurrent_inserts_with_one_key_create_one_task(db_url: str) -> None:
    results: list[db_tasks.Inserted] = []

    async def one(i: int) -> None:
        async with open_database(db_url, max_size=1) as pool:
            results.extend(
                await db_tasks.insert_tasks(pool, [new_task(f"c{i}", idempotency_key="race")])
            )

    with trio.fail_after(20):
        async with open_db(db_url) as db:
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(one, i)
            assert len(results) == 6
            assert sum(r.created for r in results) == 1
            assert len({r.row["task_id"] for r in results}) == 1
            assert await db.fetchval("SELECT count(*) FROM tasks") == 1


async def test_concurrent_batches_sharing_keys_in_other_orders_do_not_deadlock(
    db_url: str,
) -> None:
    """Two batches with the same 2,000 keys, one reversed, inserted at once: each key makes
    one task and both batches are answered with it. (Inserting rows in input order, each
    statement waited for a key the other held: PostgreSQL aborted one as a deadlock every
    time.)"""
    keys = [f"k{i:04d}" for i in range(2000)]
    forward = [new_task(f"f {k}", idempotency_key=k) for k in keys]
    backward = [new_task(f"b {k}", idempotency_key=k) for k in reversed(keys)]
    answers: dict[str, list[db_tasks.Inserted]] = {}

    async def one(name: str, tasks: list[Any], db: Any) -> None:
        answers[name] = await db_tasks.insert_tasks(db, tasks)

    with trio.fail_after(30):
        async with open_db(db_url) as db:
            for round_ in range(3):
                await db.execute("DELETE FROM tasks")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one, "forward", forward, db)
                    nursery.start_soon(one, "backward", backward, db)
                by_key = {t.idempotency_key: i.task_id
                          for t, i in zip(forward, answers["forward"], strict=True)}
                assert by_key == {t.idempotency_key: i.task_id
                                  for t, i in zip(backward, answers["backward"], strict=True)}
                created = sum(i.created for i in answers["forward"] + answers["backward"])
                assert created == len(keys), round_
                assert await db.fetchval("SELECT count(*) FROM tasks") == len(keys)


async def test_scheduled_at_none_means_now(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            t0 = await db_now(db)
            given = t0 + timedelta(hours=2)
            [now_task, later] = await db_tasks.insert_tasks(
                db, [new_task("now", None), new_task("later", given)]
            )
            t1 = await db_now(db)
            assert t0 <= now_task.row["scheduled_at"] <= t1
            assert t0 <= now_task.row["created_at"] <= t1
            assert later.row["scheduled_at"] == given
            for inserted in (now_task, later):
                row = inserted.row
                assert row["status"] == "scheduled"
                assert row["attempt"] == 0
                for field in (
                    "picked_at",
                    "started_at",
                    "completed_at",
                    "failed_at",
                    "cancelled_at",
                    "worker_id",
                    "exit_code",
                    "output",
                    "error",
                ):
                    assert row[field] is None
            # what the insert answers is exactly what it stored
            for inserted in (now_task, later):
                stored = await db_tasks.get_task(db, inserted.row["task_id"])
                assert dict(stored) == inserted.row
            # "now" is due at once
            claimed = await dispatch.claim(db, ["w1", "w1"], "c1", 30.0)
            assert [c.task_id for c in claimed] == [now_task.row["task_id"]]


@pytest.mark.parametrize("size", [2, db_tasks.COPY_MIN_TASKS + 5])
async def test_batch_stores_what_it_answers(
    db_url: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyless batch of COPY_MIN_TASKS or more goes by COPY, a smaller one by INSERT:
    either way every stored row is the row the insert answers, and coordinators are told
    the earliest due time."""
    copied: list[int] = []
    copy_tasks = db_tasks._copy_tasks

    async def spy(conn: Any, tasks: Any) -> Any:
        copied.append(len(tasks))
        return await copy_tasks(conn, tasks)

    monkeypatch.setattr(db_tasks, "_copy_tasks", spy)
    with trio.fail_after(20):
        async with open_db(db_url) as db, db.listen(notify.DUE) as notes:
            t0 = await db_now(db)
            soon = t0 + timedelta(minutes=5, microseconds=3)
            batch = [
                new_task(f"echo {i}", None if i % 3 == 0 else soon + timedelta(seconds=i),
                         max_attempts=1 + i % 4, timeout_s=None if i % 2 else 0.5 + i,
                         at_most_once=i % 5 == 0)
                for i in range(size)
            ]
            out = await db_tasks.insert_tasks(db, batch)
            t1 = await db_now(db)
            assert copied == ([size] if size >= db_tasks.COPY_MIN_TASKS else [])
            assert [o.created for o in out] == [True] * size
            assert len({o.row["created_at"] for o in out}) == 1
            assert t0 <= out[0].row["created_at"] <= t1
            for task, inserted in zip(batch, out, strict=True):
                stored = await task_row(db, task.task_id)
                assert {k: stored[k] for k in inserted.row} == inserted.row
                assert (stored["timeout_s"], stored["at_most_once"]) == (
                    task.timeout_s, task.at_most_once)
                assert stored["max_attempts"] == task.max_attempts
                assert stored["idempotency_key"] is None
            # the tasks due "now" make the earliest due time their creation time
            assert parse_time(await notes.receive(), "payload") == out[0].row["created_at"]


async def test_list_tasks_pages_newest_first(db_url: str) -> None:
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            for start in range(0, 250, 50):  # several statements, so created_at varies
                await insert(db, [new_task(f"t{start + i}") for i in range(50)])
            everything = await db.fetch(
                "SELECT task_id FROM tasks ORDER BY created_at DESC, task_id DESC"
            )
            expected = [r["task_id"] for r in everything]
            assert len(expected) == 250

            pages: list[list[uuid.UUID]] = []
            after: str | None = None
            while True:
                rows, after = await db_tasks.list_tasks(db, status=None, limit=100, after=after)
                pages.append([r["task_id"] for r in rows])
                if after is None:
                    break
                if len(pages) == 1:
                    # tasks created while paging do not shift the later pages
                    await insert(db, [new_task("newer") for _ in range(7)])
                assert len(pages) < 10
            assert [len(p) for p in pages] == [100, 100, 50]
            seen = [t for page in pages for t in page]
            assert seen == expected  # newest first, no duplicates, nothing missing

            # exactly `limit` rows left: the page is full and there is no next page
            rows, nxt = await db_tasks.list_tasks(db, status=None, limit=257, after=None)
            assert len(rows) == 257 and nxt is None


async def test_list_tasks_status_filter(db_url: str) -> None:
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            ids = await insert_due(db, 60)
            await insert(db, [new_task("later", await db_now(db) + timedelta(hours=1))])
            picked = {c.task_id for c in await dispatch.claim(db, ["w1"] * 25, "c1", 30.0)}
            assert len(picked) == 25
            cancelled = ids[-5:]
            for task_id in cancelled:
                assert (await db_tasks.cancel_task(db, task_id))[0] == "cancelled"

            async def all_pages(status: Status | None, limit: int) -> list[uuid.UUID]:
                out: list[uuid.UUID] = []
                after: str | None = None
                while True:
                    rows, after = await db_tasks.list_tasks(
                        db, status=status, limit=limit, after=after
                    )
                    assert all(status is None or r["status"] == status.value for r in rows)
                    out += [r["task_id"] for r in rows]
                    if after is None:
                        return out

            got_picked = await all_pages(Status.PICKED, 10)
            assert len(got_picked) == len(set(got_picked)) == 25
            assert set(got_picked) == picked
            assert set(await all_pages(Status.CANCELLED, 2)) == set(cancelled)
            assert len(await all_pages(Status.SCHEDULED, 7)) == 60 + 1 - 25 - 5
            assert await all_pages(Status.COMPLETED, 100) == []
            assert len(set(await all_pages(None, 13))) == 61


async def test_bad_cursor_is_invalid_input(db_url: str) -> None:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    garbage = [
        "garbage",
        "",
        "!!!",
        "é",
        b64(b"no colon here"),
        b64(b"123:not-a-uuid"),
        b64(b"abc:00000000-0000-0000-0000-000000000000"),
        b64(b"99999999999999999999999999:00000000-0000-0000-0000-000000000000"),
        b64(b"253402300800000000:00000000-0000-0000-0000-000000000000"),  # year 10000
        b64(b"\xff\xfe\xfd:x"),
    ]
    for cursor in garbage:
        with pytest.raises(InvalidInput):
            db_tasks.decode_cursor(cursor)
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            with pytest.raises(InvalidInput):
                await db_tasks.list_tasks(db, status=None, limit=10, after="garbage")
            # a real cursor round-trips exactly
            await insert(db, [new_task("x") for _ in range(3)])
            rows, nxt = await db_tasks.list_tasks(db, status=None, limit=1, after=None)
            assert nxt is not None
            assert db_tasks.decode_cursor(nxt) == (rows[0]["created_at"], rows[0]["task_id"])


@pytest.mark.parametrize("micros", [10**23, -(10**23)])
def test_cursor_with_out_of_range_time_is_invalid_input(micros: int) -> None:
    raw = f"{micros}:00000000-0000-0000-0000-000000000000".encode()
    with pytest.raises(InvalidInput):
        db_tasks.decode_cursor(base64.urlsafe_b64encode(raw).decode().rstrip("="))


async def test_cancel_task(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            scheduled, completed = await insert_due(db, 2)
            [future] = await insert(db, [new_task("f", await db_now(db) + timedelta(days=1))])

            outcome, row = await db_tasks.cancel_task(db, future)
            assert outcome == "cancelled"
            assert row["status"] == "cancelled"
            assert row["cancelled_at"] is not None
            assert row["held_by"] is None
            stored = await task_row(db, future)
            assert stored["status"] == "cancelled"
            assert stored["cancelled_at"] == row["cancelled_at"]

            # cancelling twice: it has finished (cancelled is terminal)
            outcome, row = await db_tasks.cancel_task(db, future)
            assert outcome == "finished"
            assert row["status"] == "cancelled"

            await claim_one(db, scheduled, "w1")  # the due one that is not yet cancelled ...
            await reports.apply_reports(
                db,
                [Report(scheduled, 1, ReportKind.COMPLETED, await db_now(db), exit_code=0)],
                retry_base_s=1,
                retry_cap_s=1,
            )
            before = dict(await task_row(db, scheduled))
            outcome, row = await db_tasks.cancel_task(db, scheduled)  # ... completed: 409
            assert outcome == "finished"
            assert row["status"] == "completed"
            assert row["task_id"] == scheduled
            assert dict(await task_row(db, scheduled)) == before

            assert await db_tasks.cancel_task(db, uuid.uuid4()) == ("unknown", None)
            assert (await task_row(db, completed))["status"] == "scheduled"


async def test_cancel_held_task_notifies_its_coordinators(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            [task_id] = await insert_due(db, 1)
            await claim_one(db, task_id, "w7")
            await reports.apply_reports(
                db,
                [Report(task_id, 1, ReportKind.STARTED, await db_now(db))],
                retry_base_s=1,
                retry_cap_s=1,
            )
            async with db.listen(notify.CANCEL) as notes:
                outcome, row = await db_tasks.cancel_task(db, task_id)
                assert outcome == "cancelled"
                assert row["held_by"] == "w7"
                assert row["held_attempt"] == 1
                payload = await notes.receive()
                assert payload == f"{task_id} 1 w7"
                assert notify.CancelNotice.decode(payload) == notify.CancelNotice(task_id, 1, "w7")
            stored = await task_row(db, task_id)
            assert stored["status"] == "cancelled"
            assert stored["lease_expires_at"] is None
            # the worker's result, arriving after the cancel, is stale
            _, stale = await reports.apply_reports(
                db,
                [Report(task_id, 1, ReportKind.COMPLETED, await db_now(db), exit_code=0)],
                retry_base_s=1,
                retry_cap_s=1,
            )
            assert stale == [task_id]
            assert (await task_row(db, task_id))["status"] == "cancelled"


async def test_due_notifications(db_url: str) -> None:
    """Coordinators LISTEN tm_due: inserts and reschedules announce the earliest due time."""
    with trio.fail_after(20):
        async with open_db(db_url) as db, db.listen(notify.DUE) as notes:
            now = await db_now(db)
            early, late = now + timedelta(seconds=3, microseconds=7), now + timedelta(hours=1)
            await insert(db, [new_task("late", late), new_task("early", early)])
            assert parse_time(await notes.receive(), "payload") == early

            # a claim leaves nothing scheduled in the rows it changes: no notification
            [due] = await insert_due(db, 1)
            assert parse_time(await notes.receive(), "payload") < now
            await claim_one(db, due, "w1")
            await db.execute(notify.notify_statement(notify.DUE), "marker")
            assert await notes.receive() == "marker"

            # a retry after a failure is announced with its new due time
            await db.execute("UPDATE tasks SET max_attempts = 2 WHERE task_id = $1", due)
            await reports.apply_reports(
                db,
                [Report(due, 1, ReportKind.FAILED, await db_now(db), error="x")],
                retry_base_s=5,
                retry_cap_s=5,
            )
            retry_at = (await task_row(db, due))["scheduled_at"]
            assert parse_time(await notes.receive(), "payload") == retry_at
