"""reports.apply_reports and dispatch.undo_push: fencing by (task_id, attempt) and status, the times
recorded, retries with backoff, hand-backs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import trio

from tests.integration.helpers import claim_one, db_now, insert_due, open_db, task_row
from tm.aio.pg import Database
from tm.core.backoff import exponential
from tm.core.reports import Report
from tm.core.reports import ReportKind as K
from tm.db import dispatch, reports

BASE, CAP = 0.2, 60.0
# rounding of the interval to microseconds, and float arithmetic in SQL vs Python
SLACK = timedelta(milliseconds=1)


async def apply(db: Database, *batch: Report) -> tuple[int, list[uuid.UUID]]:
    return await reports.apply_reports(db, batch, retry_base_s=BASE, retry_cap_s=CAP)


async def picked_task(db: Database, worker_id: str = "w1", **kwargs: Any) -> uuid.UUID:
    """A task claimed by `worker_id` (attempt 1)."""
    [task_id] = await insert_due(db, 1, **kwargs)
    await claim_one(db, task_id, worker_id)
    return task_id


def report(task_id: uuid.UUID, attempt: int, kind: K, at: datetime, **kw: Any) -> Report:
    return Report(task_id, attempt, kind, at, **kw)


async def test_stale_attempt_changes_nothing(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)
            before = dict(await task_row(db, task_id))
            now = await db_now(db)
            for attempt in (0, 2):
                for kind in (K.STARTED, K.COMPLETED, K.FAILED, K.RETURNED):
                    applied, stale = await apply(
                        db, report(task_id, attempt, kind, now, exit_code=1, error="x")
                    )
                    assert (applied, stale) == (0, [task_id])
                    assert dict(await task_row(db, task_id)) == before

            # a batch mixing a current and a stale report applies only the current one
            [other] = await insert_due(db, 1)
            await claim_one(db, other, "w2")
            applied, stale = await apply(
                db,
                report(task_id, 7, K.COMPLETED, now),
                report(other, 1, K.STARTED, now),
            )
            assert (applied, stale) == (1, [task_id])
            assert dict(await task_row(db, task_id)) == before
            assert (await task_row(db, other))["status"] == "running"


async def test_report_not_fitting_status_is_stale(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)
            now = await db_now(db)
            assert await apply(db, report(task_id, 1, K.STARTED, now)) == (1, [])
            running = dict(await task_row(db, task_id))
            assert running["status"] == "running"
            # started twice, or handed back once running: neither fits a running task
            for kind in (K.STARTED, K.RETURNED):
                assert await apply(db, report(task_id, 1, kind, now)) == (0, [task_id])
                assert dict(await task_row(db, task_id)) == running


async def test_started_then_completed_in_one_batch(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)
            t_started = await db_now(db)
            t_done = t_started + timedelta(milliseconds=5)
            applied, stale = await apply(
                db,
                report(task_id, 1, K.STARTED, t_started),
                report(task_id, 1, K.COMPLETED, t_done, exit_code=0, output="hi\n"),
            )
            assert (applied, stale) == (1, [])
            row = await task_row(db, task_id)
            assert row["status"] == "completed"
            assert row["started_at"] == t_started
            assert row["completed_at"] == t_done
            assert row["picked_at"] <= row["started_at"] <= row["completed_at"]
            assert row["exit_code"] == 0
            assert row["output"] == "hi\n"
            assert row["error"] is None
            assert row["failed_at"] is None
            assert row["worker_id"] == "w1"
            assert row["attempt"] == 1
            assert row["lease_expires_at"] is None


async def test_worker_clock_behind_never_orders_times_backwards(db_url: str) -> None:
    """A worker whose clock is an hour slow still yields picked <= started <= completed."""
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)
            slow = await db_now(db) - timedelta(hours=1)
            await apply(db, report(task_id, 1, K.STARTED, slow))
            await apply(db, report(task_id, 1, K.COMPLETED, slow + timedelta(seconds=1)))
            row = await task_row(db, task_id)
            assert row["status"] == "completed"
            assert row["picked_at"] <= row["started_at"] <= row["completed_at"]


async def test_failed_without_retries_is_final(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)  # max_attempts defaults to 1
            at = await db_now(db)
            applied, stale = await apply(
                db,
                report(task_id, 1, K.STARTED, at),
                report(task_id, 1, K.FAILED, at, exit_code=3, output="boom", error="exit status 3"),
            )
            assert (applied, stale) == (1, [])
            row = await task_row(db, task_id)
            assert row["status"] == "failed"
            assert row["failed_at"] == at
            assert row["picked_at"] <= row["started_at"] <= row["failed_at"]
            assert row["error"] == "exit status 3"
            assert row["exit_code"] == 3
            assert row["output"] == "boom"
            assert row["completed_at"] is None
            assert row["failures"] == 1
            assert await dispatch.claim(db, ["w1"], "c1", 30.0) == []


async def _fail_and_check_backoff(
    db: Database, task_id: uuid.UUID, attempt: int, jitter: float
) -> datetime:
    """Fail `attempt` of `task_id`; check it is rescheduled within the backoff bounds."""
    tries = attempt  # the attempt-th execution failure
    before = await db_now(db)
    applied, _ = await apply(
        db, report(task_id, attempt, K.FAILED, before, exit_code=1, error="nope", jitter=jitter)
    )
    after = await db_now(db)
    assert applied == 1
    row = await task_row(db, task_id)
    assert row["status"] == "scheduled"
    assert row["worker_id"] == "w1"  # the worker of the latest attempt is kept
    assert row["attempt"] == attempt
    assert row["failures"] == attempt
    assert row["failed_at"] is None
    assert row["error"] == "nope"
    assert row["exit_code"] == 1
    assert row["lease_expires_at"] is None

    lowest = timedelta(seconds=exponential(tries, base=BASE, cap=CAP, jitter=0.0))
    highest = timedelta(seconds=exponential(tries, base=BASE, cap=CAP, jitter=1.0))
    exact = timedelta(seconds=exponential(tries, base=BASE, cap=CAP, jitter=jitter))
    assert before + lowest - SLACK <= row["scheduled_at"] <= after + highest + SLACK
    assert before + exact - SLACK <= row["scheduled_at"] <= after + exact + SLACK
    assert row["scheduled_at"] > after  # in the future ...
    assert await dispatch.claim(db, ["w1"], "c1", 30.0) == []  # ... so not claimable yet
    return row["scheduled_at"]  # type: ignore[no-any-return]


async def test_failed_with_retries_backs_off_then_fails(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db, max_attempts=3)
            for attempt, jitter in ((1, 0.25), (2, 1.0)):
                retry_at = await _fail_and_check_backoff(db, task_id, attempt, jitter)
                await trio.sleep((retry_at - await db_now(db)).total_seconds() + 0.002)
                claimed = await dispatch.claim(db, ["w1"], "c1", 30.0)
                assert [(c.task_id, c.attempt) for c in claimed] == [(task_id, attempt + 1)]
                row = await task_row(db, task_id)
                assert row["picked_at"] >= retry_at
                assert row["started_at"] is None  # a new attempt has not started yet

            # the third failure exhausts max_attempts
            at = await db_now(db)
            await apply(db, report(task_id, 3, K.FAILED, at, exit_code=2, error="again"))
            row = await task_row(db, task_id)
            assert row["status"] == "failed"
            assert row["failures"] == 3
            assert row["error"] == "again"
            assert row["failed_at"] is not None


async def test_retry_delay_is_capped(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db, max_attempts=5)
            before = await db_now(db)
            await reports.apply_reports(
                db,
                [report(task_id, 1, K.FAILED, before, jitter=1.0)],
                retry_base_s=1000.0,
                retry_cap_s=2.0,
            )
            after = await db_now(db)
            row = await task_row(db, task_id)
            assert row["status"] == "scheduled"
            cap = timedelta(seconds=2)
            assert before + cap - SLACK <= row["scheduled_at"] <= after + cap + SLACK


async def test_at_most_once_failure_is_not_retried(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db, max_attempts=3, at_most_once=True)
            await apply(db, report(task_id, 1, K.FAILED, await db_now(db), error="x"))
            row = await task_row(db, task_id)
            assert row["status"] == "failed"
            assert row["failed_at"] is not None


async def test_completed_task_ignores_later_reports(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)
            now = await db_now(db)
            await apply(db, report(task_id, 1, K.COMPLETED, now, exit_code=0, output="ok"))
            done = dict(await task_row(db, task_id))
            assert done["status"] == "completed"
            for kind in (K.FAILED, K.STARTED, K.RETURNED, K.COMPLETED):
                later = now + timedelta(seconds=1)
                applied, stale = await apply(
                    db, report(task_id, 1, kind, later, exit_code=9, error="late")
                )
                assert (applied, stale) == (0, [task_id])
                assert dict(await task_row(db, task_id)) == done


async def test_returned_puts_picked_task_back(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            task_id = await picked_task(db)
            applied, stale = await apply(db, report(task_id, 1, K.RETURNED, await db_now(db)))
            assert (applied, stale) == (1, [])
            row = await task_row(db, task_id)
            assert row["status"] == "scheduled"
            assert row["worker_id"] is None
            assert row["started_at"] is None
            assert row["lease_expires_at"] is None
            assert row["attempt"] == 1  # the fencing token never goes back
            assert row["failures"] == 0  # a hand-back is not a failure

            claimed = await claim_one(db, task_id, "w2")
            assert claimed.attempt == 2
            # the old attempt's late reports are now stale
            assert await apply(db, report(task_id, 1, K.STARTED, await db_now(db))) == (
                0,
                [task_id],
            )
            assert (await task_row(db, task_id))["status"] == "picked"


async def test_undo_push_only_matching_picked_attempts(db_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(db_url) as db:
            a, b, c = await insert_due(db, 3)
            claimed = await dispatch.claim(db, ["w1", "w1", "w1"], "c1", 30.0)
            assert {x.task_id for x in claimed} == {a, b, c}
            await apply(db, report(c, 1, K.STARTED, await db_now(db)))  # c is running

            assert await dispatch.undo_push(db, []) == 0
            # b: wrong attempt; c: not picked any more
            assert await dispatch.undo_push(db, [(a, 1), (b, 2), (c, 1)]) == 1

            row_a = await task_row(db, a)
            assert row_a["status"] == "scheduled"
            assert row_a["worker_id"] is None
            assert row_a["picked_at"] is None
            assert row_a["lease_expires_at"] is None
            assert row_a["attempt"] == 1
            row_b = await task_row(db, b)
            assert (row_b["status"], row_b["worker_id"]) == ("picked", "w1")
            row_c = await task_row(db, c)
            assert (row_c["status"], row_c["worker_id"]) == ("running", "w1")

            # an undone task is claimable again, with a new attempt
            again = await dispatch.claim(db, ["w2"], "c1", 30.0)
            assert [(x.task_id, x.attempt) for x in again] == [(a, 2)]
            # and undoing the old attempt now does nothing
            assert await dispatch.undo_push(db, [(a, 1)]) == 0
            assert (await task_row(db, a))["worker_id"] == "w2"
