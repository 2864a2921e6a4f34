"""End to end: the Go original's scenarios, run as real `tm` processes on loopback.

Each test gets a fresh migrated database (tests/conftest.py) and a `Cluster` (cluster.py)
that kills every process it started when the test ends. Everything is observed the way a
user would: HTTP responses, CLI output and exit codes, process exit codes. Every test is
bounded by `trio.fail_after`; waits poll with a short sleep inside that deadline.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from tests.e2e.cluster import Cluster, Task, open_cluster, parse_time

pytestmark = pytest.mark.e2e

HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(database_url, tmp_path / "logs") as running:
        yield running


def assert_completed_echo(task: Task, worker_ids: set[str]) -> None:
    """A task run by the echo executor: completed once, in order, output = command."""
    assert task["status"] == "completed", task
    assert task["attempt"] == 1, task
    assert task["worker_id"] in worker_ids, task
    assert task["output"] == task["command"], task
    assert task["exit_code"] == 0, task
    assert task["error"] is None, task
    assert task["failed_at"] is None and task["cancelled_at"] is None, task
    picked = parse_time(task["picked_at"])
    started = parse_time(task["started_at"])
    completed = parse_time(task["completed_at"])
    assert parse_time(task["scheduled_at"]) <= picked <= started <= completed, task


async def test_scheduled_task_runs_on_a_three_worker_cluster(cluster: Cluster) -> None:
    """The seed README's curl example, against scheduler + coordinator + 3 workers."""
    with trio.fail_after(60):
        workers = await cluster.start_servers(workers=3)
        worker_ids = {w.worker_id for w in workers if w.worker_id}

        # Exactly what `curl -X POST localhost:8081/schedule -d '...'` sends.
        response = await cluster.client.post(
            cluster.url("/schedule"),
            content=b'{"command":"<your-command>","scheduled_at":"2023-12-25T22:34:00+05:30"}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
        created = response.json()
        task_id = created["task_id"]
        assert uuid.UUID(task_id)
        assert created["command"] == "<your-command>"
        assert parse_time(created["scheduled_at"]) == datetime(2023, 12, 25, 17, 4, tzinfo=UTC)

        task = await cluster.wait_task(task_id)
        assert_completed_echo(task, worker_ids)

        # The seed's status route shows the same task.
        status = await cluster.client.get(cluster.url("/status"), params={"task_id": task_id})
        assert status.status_code == 200, status.text
        assert status.json() == task


async def test_tasks_spread_over_all_workers(cluster: Cluster) -> None:
    with trio.fail_after(60):
        workers = await cluster.start_servers(workers=3)
        worker_ids = {w.worker_id for w in workers if w.worker_id}
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()

        created = await cluster.submit_many(
            [{"command": f"job {i}", "scheduled_at": past} for i in range(30)]
        )
        tasks = await cluster.wait_tasks([t["task_id"] for t in created])

        for task in tasks:
            assert_completed_echo(task, worker_ids)
        assert {t["worker_id"] for t in tasks} == worker_ids
        assert [t["command"] for t in tasks] == [f"job {i}" for i in range(30)]


async def test_a_killed_worker_is_noticed_and_work_goes_to_the_others(cluster: Cluster) -> None:
    with trio.fail_after(60):
        workers = await cluster.start_servers(
            workers=3, heartbeat_timeout=HEARTBEAT_TIMEOUT, heartbeat_interval=0.3
        )
        victim, *survivors = workers
        survivor_ids = {w.worker_id for w in survivors if w.worker_id}

        assert await cluster.kill(victim) == -signal.SIGKILL
        # The coordinator must notice within its heartbeat timeout (plus a margin that is
        # still below the scheduler's own 5 s --worker-timeout filter).
        with trio.fail_after(HEARTBEAT_TIMEOUT + 2.0):
            listed = await cluster.wait_workers(2)
        assert {w["worker_id"] for w in listed} == survivor_ids

        created = await cluster.submit_many([{"command": f"after {i}"} for i in range(20)])
        tasks = await cluster.wait_tasks([t["task_id"] for t in created])
        for task in tasks:
            assert_completed_echo(task, survivor_ids)
        assert {t["worker_id"] for t in tasks} == survivor_ids


async def test_due_tasks_wait_for_a_worker(cluster: Cluster) -> None:
    with trio.fail_after(60):
        await cluster.start_servers()
        created = await cluster.submit_many([{"command": f"waiting {i}"} for i in range(5)])
        ids = {t["task_id"] for t in created}

        # Watch for a couple of the coordinator's 1 s backstop scans: with nobody to run
        # them, the due tasks must stay exactly as they were.
        observations = 0
        with trio.move_on_after(2.2):
            while True:
                page = await cluster.get("/tasks?limit=1000")
                seen = {t["task_id"]: t for t in page["tasks"]}
                assert set(seen) == ids
                for task in seen.values():
                    assert task["status"] == "scheduled", task
                    assert task["picked_at"] is None and task["worker_id"] is None, task
                observations += 1
                await trio.sleep(0.1)
        assert observations >= 5
        assert cluster.coordinator is not None and cluster.coordinator.returncode is None

        [worker] = await cluster.start_workers(1)
        tasks = await cluster.wait_tasks(sorted(ids))
        for task in tasks:
            assert_completed_echo(task, {worker.worker_id or ""})


async def test_a_future_task_starts_at_its_time_not_before(cluster: Cluster) -> None:
    with trio.fail_after(60):
        workers = await cluster.start_servers(workers=3)
        worker_ids = {w.worker_id for w in workers if w.worker_id}

        due = datetime.now(UTC) + timedelta(seconds=3)
        body = {"command": "later", "scheduled_at": due.isoformat()}
        created = await cluster.post("/tasks", body)
        assert created["status"] == "scheduled"
        scheduled_at = parse_time(created["scheduled_at"])
        assert abs(scheduled_at - due) < timedelta(milliseconds=1)

        def not_early(task: Task) -> bool:
            if datetime.now(UTC) < scheduled_at - timedelta(milliseconds=50):
                assert task["status"] == "scheduled", task
            return task["status"] in ("completed", "failed", "cancelled")

        task = await cluster.wait_task(created["task_id"], not_early, timeout=15)
        assert_completed_echo(task, worker_ids)
        picked = parse_time(task["picked_at"])
        started = parse_time(task["started_at"])
        assert picked >= scheduled_at, task
        assert started >= scheduled_at, task
        # A correctness check on a shared machine, not a benchmark: "promptly" is generous.
        assert started - scheduled_at < timedelta(seconds=1.5), task


async def test_shell_executor_records_exit_code_and_output(cluster: Cluster) -> None:
    with trio.fail_after(60):
        [worker] = await cluster.start_servers(workers=1, executor="shell")

        failing = await cluster.post("/tasks", {"command": "echo hi; echo err >&2; exit 3"})
        succeeding = await cluster.post("/tasks", {"command": "printf ok"})
        failed, completed = await cluster.wait_tasks([failing["task_id"], succeeding["task_id"]])

        assert failed["status"] == "failed", failed
        assert failed["exit_code"] == 3, failed
        assert "hi" in failed["output"] and "err" in failed["output"], failed
        assert "exit code" in failed["error"] and "3" in failed["error"], failed
        assert failed["failed_at"] is not None and failed["completed_at"] is None, failed
        assert failed["attempt"] == 1 and failed["worker_id"] == worker.worker_id, failed

        assert completed["status"] == "completed", completed
        assert completed["exit_code"] == 0, completed
        assert completed["output"] == "ok", completed
        assert completed["worker_id"] == worker.worker_id, completed


async def test_sigterm_stops_every_service_cleanly(cluster: Cluster) -> None:
    with trio.fail_after(60):
        [worker] = await cluster.start_servers(workers=1)
        assert cluster.scheduler is not None and cluster.coordinator is not None

        # Idle worker: draining has nothing to wait for, so it must not use its 30 s grace.
        assert await cluster.stop(worker, signal.SIGTERM, timeout=5) == 0
        assert await cluster.stop(cluster.coordinator, signal.SIGTERM, timeout=10) == 0
        assert await cluster.stop(cluster.scheduler, signal.SIGTERM, timeout=10) == 0


async def test_cli_client_commands(cluster: Cluster) -> None:
    with trio.fail_after(90):
        [worker] = await cluster.start_servers(workers=1)
        url = ["--url", cluster.url("")]

        submitted = await cluster.run_cli("submit", "echo x", "--json", *url)
        assert submitted.returncode == 0, submitted.stderr.decode()
        task = json.loads(submitted.stdout)
        task_id = task["task_id"]
        assert task["command"] == "echo x"
        assert task["status"] in ("scheduled", "picked", "running", "completed"), task

        finished = await cluster.wait_task(task_id)
        assert_completed_echo(finished, {worker.worker_id or ""})

        unknown = str(uuid.uuid4())
        status, listing, workers, missing = await cluster.run_clis(
            ["status", task_id, "--json", *url],
            ["tasks", "--json", *url],
            ["workers", "--json", *url],
            ["status", unknown, "--json", *url],
        )

        assert status.returncode == 0, status.stderr.decode()
        shown = json.loads(status.stdout)
        assert shown["task_id"] == task_id and shown["status"] == "completed", shown
        assert shown["output"] == "echo x", shown

        assert listing.returncode == 0, listing.stderr.decode()
        assert task_id in {t["task_id"] for t in json.loads(listing.stdout)["tasks"]}

        assert workers.returncode == 0, workers.stderr.decode()
        listed = json.loads(workers.stdout)["workers"]
        assert [w["worker_id"] for w in listed] == [worker.worker_id]

        assert missing.returncode == 1, (missing.stdout, missing.stderr)
        assert missing.stdout == b""
        assert b"error" in missing.stderr and b"404" in missing.stderr, missing.stderr
        assert unknown.encode() in missing.stderr, missing.stderr


async def test_dev_runs_everything_in_one_process(cluster: Cluster) -> None:
    with trio.fail_after(60):
        dev = await cluster.start_dev(workers=2)
        listed = await cluster.wait_workers(2)
        worker_ids = {w["worker_id"] for w in listed}

        created = await cluster.post("/tasks", {"command": "from dev"})
        task = await cluster.wait_task(created["task_id"])
        assert_completed_echo(task, worker_ids)

        assert await cluster.stop(dev, signal.SIGINT, timeout=15) == 0
