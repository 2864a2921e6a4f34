"""Lost workers and leases: recover_worker_tasks, recover_expired_leases, record_heartbeat."""

from __future__ import annotations

import uuid
from datetime import timedelta

import trio

from tests.integration.helpers import claim_one, db_now, insert_due, open_db, task_row
from tm.aio.pg import Database
from tm.core.lifecycle import WORKER_LOST
from tm.core.reports import Report
from tm.core.reports import ReportKind as K
from tm.db import dispatch, recovery, reports, workers
from tm.db.workers import WorkerRecord


async def start(db: Database, task_id: uuid.UUID, attempt: int = 1) -> None:
    applied, _ = await reports.apply_reports(
        db, [Report(task_id, attempt, K.STARTED, await db_now(db))], retry_base_s=1, retry_cap_s=1
    )
    assert applied == 1


async def expire_lease(db: Database, task_id: uuid.UUID) -> None:
    await db.execute(
        "UPDATE tasks SET lease_expires_at = clock_timestamp() - interval '1 second' "
        "WHERE task_id = $1",
        task_id,
    )


async def test_recover_worker_tasks_reschedules(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            picked, running, other, done = await insert_due(db, 4)
            await claim_one(db, picked, "w1")
            await claim_one(db, running, "w1")
            await start(db, running)
            await claim_one(db, other, "w2")
            await claim_one(db, done, "w1")
            await reports.apply_reports(
                db,
                [Report(done, 1, K.COMPLETED, await db_now(db), exit_code=0)],
                retry_base_s=1,
                retry_cap_s=1,
            )
            done_before = dict(await task_row(db, done))
            other_before = dict(await task_row(db, other))

            rows = await recovery.recover_worker_tasks(db, "w1")
            assert {(r["task_id"], r["status"]) for r in rows} == {
                (picked, "scheduled"),
                (running, "scheduled"),
            }
            for task_id in (picked, running):
                row = await task_row(db, task_id)
                assert row["status"] == "scheduled"
                assert row["losses"] == 1
                assert row["failures"] == 0  # a loss does not spend the retry budget
                assert row["lease_expires_at"] is None
                assert row["failed_at"] is None
                assert row["error"] is None
                assert row["attempt"] == 1
            assert dict(await task_row(db, other)) == other_before
            assert dict(await task_row(db, done)) == done_before

            # nothing left to recover; the tasks are claimable again, with a new attempt
            assert await recovery.recover_worker_tasks(db, "w1") == []
            again = await dispatch.claim(db, ["w3", "w3"], "c1", 30.0)
            assert {(c.task_id, c.attempt) for c in again} == {(picked, 2), (running, 2)}
            # and the lost worker's late result is stale
            _, stale = await reports.apply_reports(
                db,
                [Report(running, 1, K.COMPLETED, await db_now(db))],
                retry_base_s=1,
                retry_cap_s=1,
            )
            assert stale == [running]
            assert (await task_row(db, running))["status"] == "picked"


async def test_recover_at_most_once_fails(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            [task_id] = await insert_due(db, 1, at_most_once=True, max_attempts=3)
            await claim_one(db, task_id, "w1")
            await start(db, task_id)
            rows = await recovery.recover_worker_tasks(db, "w1")
            assert [(r["task_id"], r["status"]) for r in rows] == [(task_id, "failed")]
            row = await task_row(db, task_id)
            assert row["status"] == "failed"
            assert row["error"] == WORKER_LOST == "worker lost"
            assert row["failed_at"] is not None
            assert row["failed_at"] >= row["picked_at"]
            assert row["lease_expires_at"] is None
            assert await dispatch.claim(db, ["w2"], "c1", 30.0) == []


async def test_recover_fails_after_max_losses(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            [task_id] = await insert_due(db, 1, max_attempts=5)
            for loss in (1, 2, 3):
                claimed = await claim_one(db, task_id, f"w{loss}")
                assert claimed.attempt == loss
                [row] = await recovery.recover_worker_tasks(db, f"w{loss}")
                expected = "scheduled" if loss < 3 else "failed"
                assert row["status"] == expected
                assert (await task_row(db, task_id))["losses"] == loss
            row = await task_row(db, task_id)
            assert row["status"] == "failed"
            assert row["error"] == WORKER_LOST
            assert row["failed_at"] is not None
            assert row["failures"] == 0
            assert await dispatch.claim(db, ["w9"], "c1", 30.0) == []


async def test_recover_expired_leases_only_touches_expired_held_tasks(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            picked, running, fresh, amo, done = await insert_due(db, 5)
            await db.execute("UPDATE tasks SET at_most_once = true WHERE task_id = $1", amo)
            for task_id in (picked, running, fresh, amo, done):
                await claim_one(db, task_id, "w1")
            await start(db, running)
            await reports.apply_reports(
                db,
                [Report(done, 1, K.COMPLETED, await db_now(db))],
                retry_base_s=1,
                retry_cap_s=1,
            )
            [scheduled] = await insert_due(db, 1)
            # expired leases on a finished and an unclaimed task must not resurrect them
            for task_id in (picked, running, amo, done, scheduled):
                await expire_lease(db, task_id)
            untouched = {t: dict(await task_row(db, t)) for t in (fresh, done, scheduled)}

            rows = await recovery.recover_expired_leases(db)
            assert {(r["task_id"], r["status"]) for r in rows} == {
                (picked, "scheduled"),
                (running, "scheduled"),
                (amo, "failed"),
            }
            for task_id in (picked, running):
                row = await task_row(db, task_id)
                assert (row["status"], row["losses"], row["lease_expires_at"]) == (
                    "scheduled",
                    1,
                    None,
                )
            assert (await task_row(db, amo))["error"] == WORKER_LOST
            for task_id, before in untouched.items():
                assert dict(await task_row(db, task_id)) == before
            assert await recovery.recover_expired_leases(db) == []


async def test_heartbeat_renews_only_matching_leases(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            mine, wrong_attempt, theirs, returned = await insert_due(db, 4)
            await claim_one(db, mine, "w1", lease_s=1.0)
            await claim_one(db, wrong_attempt, "w1", lease_s=1.0)
            await claim_one(db, theirs, "w2", lease_s=1.0)
            await claim_one(db, returned, "w1", lease_s=1.0)
            await start(db, mine)
            await dispatch.undo_push(db, [(returned, 1)])  # back to scheduled
            before = {t: dict(await task_row(db, t)) for t in (wrong_attempt, theirs, returned)}

            t0 = await db_now(db)
            worker = WorkerRecord(
                worker_id="w1",
                address="127.0.0.1:7001",
                draining=False,
                capacity=4,
                free_slots=2,
                held=[(mine, 1), (wrong_attempt, 2), (theirs, 1), (returned, 1)],
            )
            await workers.record_heartbeat(db, worker, "c1", lease_s=60.0)
            t1 = await db_now(db)

            lease = (await task_row(db, mine))["lease_expires_at"]
            assert t0 + timedelta(seconds=60) <= lease <= t1 + timedelta(seconds=60)
            for task_id, row in before.items():
                assert dict(await task_row(db, task_id)) == row

            [w] = await workers.list_workers(db, alive_within_s=30)
            assert (w["worker_id"], w["address"], w["state"], w["capacity"], w["free_slots"]) == (
                "w1",
                "127.0.0.1:7001",
                "active",
                4,
                2,
            )
            assert t0 <= w["last_heartbeat_at"] <= t1

            # a later heartbeat updates the worker's row
            draining = WorkerRecord("w1", "127.0.0.1:7002", True, 4, 0, held=[])
            await workers.record_heartbeat(db, draining, "c2", lease_s=60.0)
            [w2] = await workers.list_workers(db, alive_within_s=30)
            assert (w2["address"], w2["state"], w2["free_slots"]) == (
                "127.0.0.1:7002",
                "draining",
                0,
            )
            assert w2["last_heartbeat_at"] >= w["last_heartbeat_at"]
            assert await db.fetchval("SELECT coordinator_id FROM workers") == "c2"

            # the leases that were not renewed run out; the renewed one survives the reaper
            await trio.sleep(1.05)
            recovered = {r["task_id"] for r in await recovery.recover_expired_leases(db)}
            assert recovered == {wrong_attempt, theirs}
            assert (await task_row(db, mine))["status"] == "running"


async def test_worker_registry_rows(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            for name, coordinator in (("w1", "c1"), ("w2", "c1"), ("w3", "c2")):
                record = WorkerRecord(name, f"{name}:1", False, 2, 2, held=[])
                await workers.record_heartbeat(db, record, coordinator, lease_s=10)
            await db.execute(
                "UPDATE workers SET last_heartbeat_at = clock_timestamp() - interval '1 minute' "
                "WHERE worker_id = 'w2'"
            )
            alive = [w["worker_id"] for w in await workers.list_workers(db, alive_within_s=30)]
            assert alive == ["w1", "w3"]

            # only the coordinator that owns a worker's registration may forget it
            await workers.forget_worker(db, "w3", "c1")
            await workers.forget_worker(db, "w1", "c1")
            await workers.forget_silent_workers(db, silent_for_s=30)
            left = await db.fetch("SELECT worker_id FROM workers ORDER BY worker_id")
            assert [r["worker_id"] for r in left] == ["w3"]
