"""dispatch.claim: never early, oldest due first, slot assignment, and no task claimed twice
by concurrent claimers (several coordinators on one database)."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import trio

from tests.integration.helpers import db_now, insert, insert_due, new_task, open_db, task_row
from tm.aio.pg import Database, open_database
from tm.db import dispatch


async def test_future_tasks_are_not_claimed(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            now = await db_now(db)
            due, future, far = await insert(
                db,
                [
                    new_task("due", now - timedelta(seconds=1)),
                    new_task("future", now + timedelta(seconds=30)),
                    new_task("far", now + timedelta(days=1)),
                ],
            )
            claimed = await dispatch.claim(db, ["w1", "w2", "w3"], "c1", 30.0)
            assert [c.task_id for c in claimed] == [due]
            assert await dispatch.claim(db, ["w1", "w2", "w3"], "c1", 30.0) == []
            for task_id in (future, far):
                row = await task_row(db, task_id)
                assert row["status"] == "scheduled"
                assert row["attempt"] == 0
                assert row["worker_id"] is None
                assert row["picked_at"] is None
            # The coordinator's timer: the earliest is due in ~30 s by the database's clock.
            due_in = await dispatch.seconds_until_due(db)
            assert due_in is not None and 25 < due_in <= 30


async def test_claim_never_before_scheduled_at(db_url: str) -> None:
    """Poll claims across the due time: the task is picked, but only at or after it."""
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            due_at = await db_now(db) + timedelta(milliseconds=300)
            [task_id] = await insert(db, [new_task("soon", due_at)])
            claimed: list[dispatch.Claimed] = []
            polls = 0
            while not claimed:
                claimed = await dispatch.claim(db, ["w1"], "c1", 30.0)
                polls += 1
                if not claimed:
                    assert await db_now(db) <= due_at + timedelta(seconds=5)
                    await trio.sleep(0.01)
            assert polls > 1  # it really was refused while not yet due
            row = await task_row(db, task_id)
            assert row["status"] == "picked"
            assert row["picked_at"] >= due_at
            assert claimed[0].scheduled_at == due_at


async def test_claims_oldest_due_first_with_slots_in_order(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            now = await db_now(db)
            ages = list(range(1, 11))  # due 1..10 minutes ago
            random.shuffle(ages)  # inserted in no particular order
            ids = await insert(db, [new_task(f"age {a}", now - timedelta(minutes=a)) for a in ages])
            by_age = dict(zip(ages, ids, strict=True))

            slots = ["a", "b", "c", "a"]
            claimed = await dispatch.claim(db, slots, "c1", 30.0)
            claimed.sort(key=lambda c: c.scheduled_at)
            assert [c.task_id for c in claimed] == [by_age[a] for a in (10, 9, 8, 7)]
            assert [c.worker_id for c in claimed] == slots
            assert all(c.attempt == 1 for c in claimed)
            for c in claimed:
                row = await task_row(db, c.task_id)
                assert row["status"] == "picked"
                assert row["worker_id"] == c.worker_id
                assert row["coordinator_id"] == "c1"
                assert row["attempt"] == 1
                assert row["picked_at"] >= row["scheduled_at"]
                lease = (row["lease_expires_at"] - row["picked_at"]).total_seconds()
                assert 29.9 <= lease <= 30.1

            # the next claim continues with the next oldest
            nxt = await dispatch.claim(db, ["d"], "c1", 30.0)
            assert [c.task_id for c in nxt] == [by_age[6]]


async def test_equal_scheduled_at_claimed_in_task_id_order(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            at = await db_now(db) - timedelta(seconds=5)
            ids = await insert(db, [new_task(f"t{i}", at) for i in range(6)])
            claimed = await dispatch.claim(db, ["x", "y", "z"], "c1", 30.0)
            by_slot = {c.worker_id: c.task_id for c in claimed}
            lowest = sorted(ids)[:3]
            assert [by_slot["x"], by_slot["y"], by_slot["z"]] == lowest


async def test_claim_with_fewer_due_tasks_than_slots(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            first, second = await insert_due(db, 2)
            await insert(db, [new_task("later", await db_now(db) + timedelta(hours=1))])
            claimed = await dispatch.claim(db, ["w1", "w2", "w3", "w4", "w5"], "c1", 30.0)
            claimed.sort(key=lambda c: c.scheduled_at)
            assert [(c.task_id, c.worker_id) for c in claimed] == [(first, "w1"), (second, "w2")]
            assert await dispatch.claim(db, [], "c1", 30.0) == []
            counts = dict(await db.fetch("SELECT status, count(*) FROM tasks GROUP BY status"))
            assert counts == {"picked": 2, "scheduled": 1}


async def test_claim_pairs_due_tasks_with_slots_in_order(db_url: str) -> None:
    """What the coordinator pushes is what the claim pairs: the i-th oldest due task goes to
    slots[i], whatever the slots repeat, and only a prefix of the slots is used when fewer
    tasks are due; grouped by worker (as the coordinator batches pushes), each worker gets
    exactly the tasks paired with its slots."""
    rng = random.Random(12)
    with trio.fail_after(30):
        async with open_db(db_url) as db:
            remaining = await insert_due(db, 50)  # oldest first
            while True:
                slots = [rng.choice("abc") for _ in range(rng.randint(0, 12))]
                claimed = await dispatch.claim(db, slots, "c1", 30.0)
                paired = list(zip(remaining, slots, strict=False))
                assert sorted((c.scheduled_at, c.task_id, c.worker_id) for c in claimed) == [
                    ((await task_row(db, t))["scheduled_at"], t, w) for t, w in paired
                ]
                batches: dict[str, set[uuid.UUID]] = {}
                for c in claimed:
                    batches.setdefault(c.worker_id, set()).add(c.task_id)
                assert batches == {
                    w: {t for t, slot in paired if slot == w} for _, w in paired
                }
                remaining = remaining[len(paired):]
                if not remaining and slots:
                    break
            assert await dispatch.claim(db, ["a"], "c1", 30.0) == []


async def test_concurrent_claimers_never_share_a_task(db_url: str) -> None:
    total, pools, per_pool = 2000, 4, 2
    claims: dict[str, list[uuid.UUID]] = {}

    with trio.fail_after(40):
        async with open_db(db_url) as db:
            ids = await insert_due(db, total)

            async def claimer(pool_db: Database, name: str) -> None:
                mine = claims.setdefault(name, [])
                batch = [name] * random.randint(20, 60)
                while True:
                    got = await dispatch.claim(pool_db, batch, f"coord-{name}", 30.0)
                    if not got:
                        return
                    assert all(c.worker_id == name and c.attempt == 1 for c in got)
                    mine.extend(c.task_id for c in got)
                    await trio.lowlevel.checkpoint()

            async def pool_claimers(index: int) -> None:
                # a separate pool per "coordinator", so claims run on separate connections
                async with (
                    open_database(db_url, max_size=per_pool) as pool_db,
                    trio.open_nursery() as inner,
                ):
                    for j in range(per_pool):
                        inner.start_soon(claimer, pool_db, f"p{index}c{j}")

            async with trio.open_nursery() as nursery:
                for i in range(pools):
                    nursery.start_soon(pool_claimers, i)

            everything = [t for got in claims.values() for t in got]
            assert len(everything) == total  # no task claimed twice ...
            assert set(everything) == set(ids)  # ... and none left behind
            assert sum(1 for got in claims.values() if got) > 1  # it really was concurrent

            rows = await db.fetch("SELECT task_id, status, attempt, worker_id FROM tasks")
            owner = {t: name for name, got in claims.items() for t in got}
            assert len(rows) == total
            for row in rows:
                assert row["status"] == "picked"
                assert row["attempt"] == 1
                assert row["worker_id"] == owner[row["task_id"]]
