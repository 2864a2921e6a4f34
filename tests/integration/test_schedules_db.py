"""Materializing recurring schedules in PostgreSQL (tm.db.schedules, tm.coordinator.recurring).

* concurrent materializers (separate pools, as separate coordinators) never create an
  occurrence twice, and leave no gaps; a repeated insert of an occurrence is a no-op;
* catch_up none / latest / all after an outage; overlap skip; pause and resume;
* the coordinator's loop wakes on NOTIFY and at each fire time.

Outages are simulated by moving a schedule's next_fire_at into the past, as if no
coordinator had run since then.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

from tests.integration.helpers import db_now, open_db
from tests.pgserver import admin
from tm.aio.pg import Database
from tm.coordinator.recurring import serve_recurring
from tm.core.schedules import parse_new_schedule
from tm.db import schedules as db_schedules
from tm.settings import CoordinatorSettings

GRACE = timedelta(seconds=5)


@pytest.fixture
def url(db_url: str) -> Iterator[str]:
    admin(db_url, "TRUNCATE schedules")
    yield db_url


async def create(db: Database, name: str, cron: str, **fields: Any) -> Any:
    spec = parse_new_schedule({"name": name, "cron": cron, "command": f"run {name}", **fields})
    row = await db_schedules.create_schedule(db, spec)
    assert row is not None
    return row


async def set_next_fire(db: Database, name: str, when: datetime) -> None:
    await db.execute("UPDATE schedules SET next_fire_at = $2 WHERE name = $1", name, when)


async def fire_times(db: Database, name: str) -> list[datetime]:
    rows = await db.fetch(
        "SELECT fire_at, scheduled_at FROM tasks WHERE schedule_name = $1 ORDER BY fire_at", name
    )
    assert all(r["fire_at"] == r["scheduled_at"] for r in rows)
    return [r["fire_at"] for r in rows]


async def schedule_row(db: Database, name: str) -> Any:
    return await db.fetchrow("SELECT * FROM schedules WHERE name = $1", name)


async def test_due_occurrence_becomes_a_task_and_the_schedule_advances(url: str) -> None:
    with trio.fail_after(20):
        async with open_db(url) as db:
            created = await create(db, "minutely", "* * * * *")
            now = await db_now(db)
            assert now < created["next_fire_at"] <= now + timedelta(minutes=1)
            assert (await db_schedules.materialize_due(db, grace=GRACE)).decided == []

            due = created["next_fire_at"] - timedelta(minutes=1)
            await set_next_fire(db, "minutely", due)
            result = await db_schedules.materialize_due(db, grace=timedelta(minutes=2))
            [decided] = result.decided
            assert [fire for _, fire in decided.created] == [due]
            task = await db.fetchrow("SELECT * FROM tasks WHERE task_id = $1",
                                     decided.created[0][0])
            assert task["task_id"].version == 7  # time-ordered, like submitted tasks
            assert (task["command"], task["status"], task["scheduled_at"], task["fire_at"],
                    task["schedule_name"]) == ("run minutely", "scheduled", due, due, "minutely")
            row = await schedule_row(db, "minutely")
            assert row["last_fire_at"] == due
            assert row["next_fire_at"] == created["next_fire_at"]
            assert await db_schedules.seconds_until_next_fire(db) == pytest.approx(
                (row["next_fire_at"] - await db_now(db)).total_seconds(), abs=0.5)


async def test_concurrent_materializers_never_duplicate_and_leave_no_gaps(url: str) -> None:
    names = [f"s{i}" for i in range(8)]
    with trio.fail_after(40):
        async with open_db(url) as db:
            for name in names:
                await create(db, name, "* * * * * *", catch_up="all")
            start = (await db_now(db)).replace(microsecond=0) - timedelta(seconds=30)
            for name in names:  # 30 s of backlog each, then live firing
                await set_next_fire(db, name, start)

        async def materializer(stop_at: float) -> None:
            async with open_db(url, max_size=2) as mine:
                while trio.current_time() < stop_at:
                    await db_schedules.materialize_due(mine, grace=GRACE, max_schedules=3,
                                                       max_occurrences=7)
                    await trio.sleep(random.random() * 0.02)

        stop_at = trio.current_time() + 3
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(materializer, stop_at)

        async with open_db(url) as db:
            # a coordinator that lost its commit's answer and inserts again changes nothing
            again = await db.fetch(
                db_schedules.INSERT_OCCURRENCES,
                [uuid.uuid4()], ["dup"], [start], [1], [None], [False], [names[0]],
            )
            assert again == []
            now = await db_now(db)
            for name in names:
                fires = await fire_times(db, name)
                assert len(fires) == len(set(fires))
                assert fires[0] == start
                # one per second from the start of the backlog to (nearly) now, no gaps
                assert fires == [start + timedelta(seconds=i) for i in range(len(fires))]
                assert fires[-1] >= now - timedelta(seconds=2)
                row = await schedule_row(db, name)
                assert row["next_fire_at"] == fires[-1] + timedelta(seconds=1)
                assert row["missed_runs"] == 0


@pytest.mark.parametrize(
    ("catch_up", "created", "missed"),
    [("none", 0, 4), ("latest", 1, 3), ("all", 4, 0)],
)
async def test_catch_up_after_an_outage(url: str, catch_up: str, created: int,
                                        missed: int) -> None:
    with trio.fail_after(20):
        async with open_db(url) as db:
            await create(db, "hourly", "@every 1h", catch_up=catch_up)
            now = await db_now(db)
            this_hour = now.replace(minute=0, second=0, microsecond=0)
            await set_next_fire(db, "hourly", this_hour - timedelta(hours=3))
            # grace: a microsecond, so every due occurrence counts as missed
            result = await db_schedules.materialize_due(db, grace=timedelta(microseconds=1))
            assert result.decided[0].plan.missed == missed
            fires = await fire_times(db, "hourly")
            expected = [this_hour - timedelta(hours=h) for h in (3, 2, 1, 0)]
            assert fires == {"none": [], "latest": expected[-1:], "all": expected}[catch_up]
            assert len(fires) == created
            row = await schedule_row(db, "hourly")
            assert (row["missed_runs"], row["next_fire_at"]) == (
                missed, this_hour + timedelta(hours=1))


async def test_overlap_skip_waits_for_the_previous_run(url: str) -> None:
    with trio.fail_after(20):
        async with open_db(url) as db:
            await create(db, "exclusive", "@every 1s", overlap="skip", catch_up="all")
            now = (await db_now(db)).replace(microsecond=0)
            await set_next_fire(db, "exclusive", now - timedelta(seconds=3))
            await db_schedules.materialize_due(db, grace=GRACE)
            first = await fire_times(db, "exclusive")
            assert first == [now - timedelta(seconds=3)]  # the rest of the backlog skipped
            assert (await schedule_row(db, "exclusive"))["skipped_runs"] >= 3

            await set_next_fire(db, "exclusive", now)
            await db_schedules.materialize_due(db, grace=GRACE)
            assert await fire_times(db, "exclusive") == first  # still unfinished: skipped
            skipped = (await schedule_row(db, "exclusive"))["skipped_runs"]

            await db.execute("UPDATE tasks SET status = 'cancelled', "
                             "cancelled_at = clock_timestamp()")
            await set_next_fire(db, "exclusive", now + timedelta(seconds=1))
            with trio.fail_after(3):
                while len(await fire_times(db, "exclusive")) == 1:
                    await db_schedules.materialize_due(db, grace=GRACE)
                    await trio.sleep(0.05)
            assert (await fire_times(db, "exclusive"))[-1] >= now + timedelta(seconds=1)
            assert (await schedule_row(db, "exclusive"))["skipped_runs"] == skipped


async def test_pause_resume_and_an_unusable_time_zone(url: str) -> None:
    with trio.fail_after(20):
        async with open_db(url) as db:
            await create(db, "p", "@every 1s")
            paused = await db_schedules.update_schedule(db, "p", {"paused": True})
            assert paused["paused"] and paused["next_fire_at"] is None
            assert (await db_schedules.materialize_due(db, grace=GRACE)).decided == []
            assert await fire_times(db, "p") == []
            resumed = await db_schedules.update_schedule(db, "p", {"paused": False})
            assert resumed["next_fire_at"] > await db_now(db) - timedelta(seconds=1)

            # a time zone this machine does not know (another tzdata): stopped, reported
            await create(db, "z", "@daily", timezone="Europe/Berlin")
            await db.execute("UPDATE schedules SET timezone = 'Nowhere/Town', "
                             "next_fire_at = clock_timestamp() - interval '1 s' WHERE name = 'z'")
            result = await db_schedules.materialize_due(db, grace=GRACE)
            [decided] = [d for d in result.decided if d.name == "z"]
            assert decided.error is not None and "Nowhere/Town" in decided.error
            assert (await schedule_row(db, "z"))["next_fire_at"] is None


async def test_coordinator_loops_fire_each_second_once_and_wake_on_changes(url: str) -> None:
    settings = CoordinatorSettings(database_url=url, scan_interval_s=5.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def coordinator(index: int) -> None:
                async with open_db(url, max_size=3) as db:
                    await serve_recurring(settings, db, f"c{index}")

            for index in range(2):
                nursery.start_soon(coordinator, index)
            await trio.sleep(0.5)  # both loops idle: nothing scheduled
            async with open_db(url) as db:
                await create(db, "tick", "* * * * * *")  # NOTIFY wakes them
                created_at = await db_now(db)
                await trio.sleep(3.2)
                rows = await db.fetch("SELECT fire_at, created_at FROM tasks "
                                      "WHERE schedule_name = 'tick' ORDER BY fire_at")
            nursery.cancel_scope.cancel()
    fires = [r["fire_at"] for r in rows]
    assert 2 <= len(fires) <= 4
    assert fires == [fires[0] + timedelta(seconds=i) for i in range(len(fires))]
    assert fires[0] - created_at <= timedelta(seconds=1)
    # created at (never before) the fire time, and promptly
    for row in rows:
        assert timedelta(0) <= row["created_at"] - row["fire_at"] < timedelta(seconds=0.5)
