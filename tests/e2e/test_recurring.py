"""Recurring schedules end to end: real `tm` processes, two coordinators on one database.

* `* * * * * *` with two coordinators: exactly one task per second — fire times unique and
  without gaps, each run once by the worker; `tm schedules pause` stops new runs and
  `resume` starts them again (from the next second, nothing caught up).
* Every coordinator stopped for a few seconds: on restart, `catch_up: none` leaves the outage
  empty, `catch_up: all` fills it in.

Coordinators run with `--schedule-grace 1`: an occurrence more than a second old when a
coordinator gets to it counts as missed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.cluster import Cluster, logged_task_ids, open_cluster, query_database

pytestmark = pytest.mark.e2e

COORDINATOR: dict[str, Any] = {
    "heartbeat_timeout": 2.0, "heartbeat_interval": 0.3, "extra": ["--schedule-grace", "1"],
}
SECOND = timedelta(seconds=1)


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(database_url, tmp_path / "logs") as running:
        yield running


async def fire_times(cluster: Cluster, name: str) -> list[datetime]:
    rows = await query_database(
        cluster.database_url,
        "SELECT fire_at, scheduled_at FROM tasks WHERE schedule_name = $1 ORDER BY fire_at",
        name,
    )
    assert all(r["fire_at"] == r["scheduled_at"] for r in rows)
    return [r["fire_at"] for r in rows]


async def db_now(cluster: Cluster) -> datetime:
    [row] = await query_database(cluster.database_url, "SELECT clock_timestamp() AS now")
    now: datetime = row["now"]
    return now


def gaps(fires: list[datetime]) -> list[datetime]:
    """The seconds missing between the first and the last fire time."""
    present = set(fires)
    missing, at = [], fires[0]
    while at < fires[-1]:
        if at not in present:
            missing.append(at)
        at += SECOND
    return missing


async def wait_runs(cluster: Cluster, name: str, count: int, *, after: datetime | None = None,
                    timeout: float = 15.0) -> list[datetime]:
    async def enough() -> list[datetime] | None:
        fires = await fire_times(cluster, name)
        newer = [f for f in fires if after is None or f > after]
        return fires if len(newer) >= count else None

    return await cluster.wait_until(enough, f"{count} runs of {name}", timeout=timeout)


async def test_two_coordinators_create_each_occurrence_once_and_pause_stops_them(
    cluster: Cluster,
) -> None:
    with trio.fail_after(90):
        await cluster.start_scheduler(wait=False)
        await cluster.start_coordinator(name="coordinator-a", wait=False, **COORDINATOR)
        await cluster.start_coordinator(name="coordinator-b", wait=False, **COORDINATOR)
        worker = await cluster.start_worker()
        await cluster.wait_http_ready(cluster.procs[0])
        for proc in cluster.procs[1:3]:
            await cluster.wait_listening(proc)
        await cluster.wait_for_workers([worker])
        url = ["--url", cluster.url("")]

        created = await cluster.run_cli("schedules", "create", "tick", "* * * * * *",
                                        "echo tick", "--catch-up", "none", "--json", *url)
        assert created.returncode == 0, created.stderr.decode()
        assert json.loads(created.stdout)["cron"] == "* * * * * *"

        fires = await wait_runs(cluster, "tick", 8)
        assert len(fires) == len(set(fires))
        assert gaps(fires) == []

        paused = await cluster.run_cli("schedules", "pause", "tick", "--json", *url)
        assert paused.returncode == 0, paused.stderr.decode()
        assert json.loads(paused.stdout)["next_fire_at"] is None
        paused_at = await db_now(cluster)
        before = await fire_times(cluster, "tick")
        # nothing to wait for but time: a paused schedule must stay quiet for a while
        await trio.sleep(2.5)
        after_pause = await fire_times(cluster, "tick")
        assert after_pause == before
        assert after_pause[-1] <= paused_at

        resumed = await cluster.run_cli("schedules", "resume", "tick", *url)
        assert resumed.returncode == 0, resumed.stderr.decode()
        fires = await wait_runs(cluster, "tick", 3, after=paused_at)
        # resuming does not catch up what fell due while paused
        assert not [f for f in fires if before[-1] < f <= paused_at + 2 * SECOND]
        resumed_part = [f for f in fires if f > paused_at]
        assert gaps(resumed_part) == [] and len(fires) == len(set(fires))

        runs = await cluster.run_cli("schedules", "runs", "tick", "--limit", "3", "--json", *url)
        page = json.loads(runs.stdout)
        assert len(page["tasks"]) == 3 and page["next"]
        assert all(t["schedule"] == "tick" for t in page["tasks"])

        deleted = await cluster.run_cli("schedules", "delete", "tick", *url)
        assert deleted.returncode == 0, deleted.stderr.decode()
        final = await fire_times(cluster, "tick")  # deleting keeps the tasks

        # every occurrence was created by exactly one of the two coordinators ...
        coordinators = [p for p in cluster.procs if p.name.startswith("coordinator")]

        async def logged_once() -> bool:
            fired = sum(p.log_text().count("action=schedule_fired") for p in coordinators)
            return fired == len(final)

        await cluster.wait_until(logged_once, "one schedule_fired line per run")

        # ... and run exactly once by the worker
        async def all_finished() -> bool:
            rows = await query_database(
                cluster.database_url, "SELECT count(*) AS n FROM tasks "
                "WHERE schedule_name = 'tick' AND status = 'completed'")
            return bool(rows[0]["n"] == len(final))

        await cluster.wait_until(all_finished, "the runs to complete")
        ids = [r["task_id"] for r in await query_database(
            cluster.database_url, "SELECT task_id FROM tasks WHERE schedule_name = 'tick'")]
        finished = logged_task_ids([worker], "task_finished")
        assert sorted(finished[str(task_id)] for task_id in ids) == [1] * len(ids), finished


async def test_catch_up_after_every_coordinator_was_stopped(cluster: Cluster) -> None:
    with trio.fail_after(90):
        await cluster.start_scheduler(wait=False)
        first = await cluster.start_coordinator(name="coordinator-a", wait=False, **COORDINATOR)
        second = await cluster.start_coordinator(name="coordinator-b", wait=False, **COORDINATOR)
        await cluster.wait_http_ready(cluster.procs[0])
        for proc in (first, second):
            await cluster.wait_listening(proc)
        for name, catch_up in (("none", "none"), ("all", "all")):
            await cluster.post("/schedules", {"name": name, "cron": "@every 1s",
                                              "command": f"echo {name}", "catch_up": catch_up})
        await wait_runs(cluster, "none", 3)
        await wait_runs(cluster, "all", 3)

        await cluster.stop(first)
        await cluster.stop(second)
        stopped_at = await db_now(cluster)
        # the outage: no coordinator for (at least) four seconds
        await trio.sleep(4)
        await cluster.start_coordinator(name="coordinator-c", **COORDINATOR)
        restarted_at = await db_now(cluster)
        none = await wait_runs(cluster, "none", 2, after=restarted_at)
        every = await wait_runs(cluster, "all", 2, after=restarted_at)

        # catch_up all: the outage is filled in, one task per second, nothing twice
        assert gaps(every) == [] and len(every) == len(set(every))
        assert [f for f in every if stopped_at < f < restarted_at - SECOND]
        # catch_up none: the outage stays empty (at most the last second or so runs late)
        missing = gaps(none)
        assert len(missing) >= 3, (stopped_at, restarted_at, none)
        assert all(stopped_at - 2 * SECOND <= m <= restarted_at for m in missing)
        assert not [f for f in none if stopped_at + SECOND < f < restarted_at - 2 * SECOND]
        assert len(none) == len(set(none))

        rows = await query_database(cluster.database_url,
                                    "SELECT name, missed_runs FROM schedules ORDER BY name")
        missed = {r["name"]: r["missed_runs"] for r in rows}
        assert missed["all"] == 0 and missed["none"] >= len(missing) - 1
