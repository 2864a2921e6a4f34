"""End to end under faults: killed workers and coordinators, drains, cancels, timeouts,
retries, a database outage and concurrent duplicate submissions.

Each scenario runs real `tm` processes (tests/e2e/cluster.py) against a fresh database and
checks the contract of DESIGN.md "Task lifecycle and guarantees" the way an operator would:
HTTP responses, rows in the database, process exit codes, the processes' own logs and
/proc. "Run exactly once" is checked on the workers' logs: every execution ends in one
`action=task_finished ... task_id=<id>` line, so a task run twice shows two.

Coordinators use fast failure detection (heartbeat timeout 2 s, interval 0.3 s, lease 6 s).
Every test is bounded by `trio.fail_after`; every wait polls a condition.
"""

from __future__ import annotations

import random
import re
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.e2e.cluster import (
    TERMINAL,
    Cluster,
    Proc,
    Task,
    logged_task_ids,
    open_cluster,
    parse_time,
    pids_with_cmdline,
    query_database,
)
from tests.pgserver import with_database

pytestmark = pytest.mark.e2e

FAST: dict[str, Any] = {"heartbeat_timeout": 2.0, "heartbeat_interval": 0.3, "lease": 6.0}


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(database_url, tmp_path / "logs") as running:
        yield running


def sleep_command(seconds: int) -> str:
    """`sleep <seconds>.<random digits>`: a command line no other process on the machine has,
    so /proc can tell whether this task's processes (the shell and the sleep) still exist."""
    return f"sleep {seconds}.{random.randrange(10**8):08d}"


def status_is(*statuses: str) -> Any:
    return lambda task: task["status"] in statuses


def worker_by_id(workers: list[Proc], worker_id: str) -> Proc:
    [proc] = [w for w in workers if w.worker_id == worker_id]
    return proc


async def status_counts(database_url: str) -> Counter[str]:
    rows = await query_database(database_url, "SELECT status, count(*) FROM tasks GROUP BY 1")
    return Counter({row["status"]: row["count"] for row in rows})


async def wait_all_finished(
    cluster: Cluster, database_url: str, total: int, *, timeout: float
) -> Counter[str]:
    """Poll the database until all `total` tasks are in a terminal status; their counts."""

    async def check() -> Counter[str] | None:
        counts = await status_counts(database_url)
        finished = sum(n for status, n in counts.items() if status in TERMINAL)
        return counts if finished == total else None

    return await cluster.wait_until(check, f"{total} tasks to finish", timeout=timeout, poll=0.2)


def logged_count(line: str) -> int:
    """The `count=<n>` of a log line."""
    found = re.search(r"\bcount=(\d+)", line)
    assert found is not None, line
    return int(found.group(1))


def assert_each_ran_once(workers: list[Proc], task_ids: set[str]) -> Counter[str]:
    """Across all worker logs, every task finished exactly once (and nothing else ran)."""
    finished = logged_task_ids(workers, "task_finished")
    missing = task_ids - set(finished)
    assert not missing, f"{len(missing)} tasks never ran to the end: {sorted(missing)[:5]}"
    extra = set(finished) - task_ids
    assert not extra, f"workers ran unknown tasks: {sorted(extra)[:5]}"
    twice = {t: n for t, n in finished.items() if n != 1}
    assert not twice, f"{len(twice)} tasks ran more than once: {dict(list(twice.items())[:5])}"
    return finished


# ---------------------------------------------------------------------------- worker loss


async def test_a_killed_workers_task_runs_again_on_another_worker(cluster: Cluster) -> None:
    with trio.fail_after(60):
        workers = await cluster.start_servers(workers=2, executor="shell", **FAST)
        command = sleep_command(4)
        created = await cluster.post("/tasks", {"command": command})
        running = await cluster.wait_task(created["task_id"], status_is("running"))
        victim = worker_by_id(workers, running["worker_id"])
        [survivor] = [w for w in workers if w is not victim]

        assert await cluster.kill(victim) == -signal.SIGKILL
        killed_at = datetime.now(UTC)

        task = await cluster.wait_task(created["task_id"], timeout=25)
        assert task["status"] == "completed", task
        assert task["attempt"] == 2, task
        assert task["worker_id"] == survivor.worker_id != victim.worker_id, task
        assert task["exit_code"] == 0 and task["error"] is None, task
        # The second run started after the first worker was gone: it is a new execution,
        # not the first one's result arriving late.
        assert parse_time(task["started_at"]) > killed_at, task
        assert logged_task_ids([survivor], "task_finished")[created["task_id"]] == 1
        assert logged_task_ids([victim], "task_finished")[created["task_id"]] == 0
        assert cluster.coordinator is not None
        assert created["task_id"] in logged_task_ids([cluster.coordinator], "task_recovered")


async def test_an_at_most_once_task_fails_when_its_worker_is_killed(cluster: Cluster) -> None:
    with trio.fail_after(60):
        workers = await cluster.start_servers(workers=2, executor="shell", **FAST)
        created = await cluster.post("/tasks", {"command": sleep_command(4), "at_most_once": True})
        task_id = created["task_id"]
        running = await cluster.wait_task(task_id, status_is("running"))
        victim = worker_by_id(workers, running["worker_id"])
        [survivor] = [w for w in workers if w is not victim]

        assert await cluster.kill(victim) == -signal.SIGKILL
        failed = await cluster.wait_task(task_id, timeout=15)
        assert failed["status"] == "failed", failed
        assert failed["error"] == "worker lost", failed
        assert failed["attempt"] == 1, failed
        assert failed["worker_id"] == victim.worker_id, failed
        assert failed["failed_at"] is not None and failed["completed_at"] is None, failed

        # Failed is final: watch a few of the coordinator's scans; nobody picks it up again.
        observations = 0
        with trio.move_on_after(2.0):
            while True:
                assert await cluster.get(f"/tasks/{task_id}") == failed
                observations += 1
                await trio.sleep(0.1)
        assert observations >= 5
        assert task_id not in survivor.log_text()
        assert survivor.returncode is None


# ---------------------------------------------------------------------------- coordinator loss


async def test_coordinator_killed_under_load_loses_nothing_and_runs_nothing_twice(
    cluster: Cluster, database_url: str
) -> None:
    total = 3000
    with trio.fail_after(120):
        workers = await cluster.start_servers(workers=3, **FAST)
        first = cluster.coordinator
        assert first is not None and first.address is not None

        # A stream: due times spread over 4 s, so tasks are being claimed, pushed, run and
        # reported at the moment the coordinator dies, and more fall due while it is down.
        start = datetime.now(UTC) + timedelta(milliseconds=500)
        step = timedelta(seconds=4) / total
        body = [
            {"command": f"stream {i}", "scheduled_at": (start + i * step).isoformat()}
            for i in range(total)
        ]
        task_ids: set[str] = set()
        for i in range(0, total, 1000):
            task_ids |= {t["task_id"] for t in await cluster.submit_many(body[i : i + 1000])}

        async def some_completed() -> Counter[str] | None:
            counts = await status_counts(database_url)
            return counts if counts["completed"] >= total // 5 else None

        before = await cluster.wait_until(some_completed, "a fifth of the tasks", timeout=20)
        assert await cluster.kill(first) == -signal.SIGKILL
        at_kill = await status_counts(database_url)
        assert at_kill["completed"] < total, ("the stream ended before the kill", before, at_kill)

        second = await cluster.start_coordinator(
            address=first.address, name="coordinator-restarted", **FAST
        )
        assert second.address == first.address
        counts = await wait_all_finished(cluster, database_url, total, timeout=60)
        assert counts == Counter({"completed": total}), counts

        rows = await query_database(
            database_url, "SELECT task_id::text, attempt, worker_id, output, command FROM tasks"
        )
        assert {r["task_id"] for r in rows} == task_ids
        worker_ids = {w.worker_id for w in workers}
        assert all(r["worker_id"] in worker_ids and r["output"] == r["command"] for r in rows)
        redispatched = sorted(r["task_id"] for r in rows if r["attempt"] > 1)
        print(
            f"at kill: {dict(at_kill)}; tasks with attempt > 1 (claimed, never delivered, "
            f"recovered by lease expiry): {len(redispatched)}"
        )
        # Re-dispatch is allowed only for tasks no worker ever ran: each task ran once. The
        # re-dispatched ones are exactly those the new coordinator recovered by lease expiry.
        assert_each_ran_once(workers, task_ids)
        assert set(redispatched) == set(logged_task_ids([second], "lease_expired"))
        assert all(r["attempt"] <= 2 for r in rows), "a task was recovered more than once"
        # The workers lived through it and are registered with the new coordinator.
        assert all(w.returncode is None for w in workers)
        await cluster.wait_for_workers(workers)
        assert "worker_registered" in second.log_text()


# ---------------------------------------------------------------------------- drain


async def test_sigterm_drains_a_busy_worker_and_hands_its_queue_back(
    cluster: Cluster,
) -> None:
    grace = 10.0
    with trio.fail_after(90):
        await cluster.start_servers(**FAST)
        victim = await cluster.start_worker(executor="shell", concurrency=2, drain_grace=grace)
        others = [await cluster.start_worker(executor="shell", concurrency=4) for _ in range(2)]
        await cluster.wait_for_workers([victim, *others])
        # Spread over the three workers, the victim gets about 8: 2 running, the rest queued.
        created = await cluster.submit_many([{"command": "sleep 1"} for _ in range(30)])
        task_ids = [t["task_id"] for t in created]

        async def victim_busy() -> list[Task] | None:
            page: list[Task] = (await cluster.get("/tasks?limit=100"))["tasks"]
            held = [t for t in page if t["worker_id"] == victim.worker_id]
            running = [t for t in held if t["status"] == "running"]
            queued = [t for t in held if t["status"] == "picked"]
            return held if len(running) == 2 and len(queued) >= 3 else None

        await cluster.wait_until(victim_busy, "the victim to run 2 tasks and queue more")
        victim.stopped = True
        victim.process.send_signal(signal.SIGTERM)
        with trio.fail_after(grace):

            async def listed_draining() -> dict[str, Any] | None:
                listed = (await cluster.get("/workers"))["workers"]
                mine = [w for w in listed if w["worker_id"] == victim.worker_id]
                return mine[0] if mine and mine[0]["state"] == "draining" else None

            draining = await cluster.wait_until(listed_draining, "the victim to be draining")
            assert draining["free_slots"] == 0, draining
            assert await victim.process.wait() == 0, victim.log_tail()

        tasks = await cluster.wait_tasks(task_ids, timeout=30)
        assert [t["status"] for t in tasks] == ["completed"] * len(tasks), tasks
        # The victim finished what it had started; what it held unstarted was handed back
        # and ran on the others (dispatched again: attempt 2).
        ran_on_victim = [t for t in tasks if t["worker_id"] == victim.worker_id]
        handed_back = [t for t in tasks if t["attempt"] >= 2]
        assert len(ran_on_victim) >= 2 and all(t["attempt"] == 1 for t in ran_on_victim), tasks
        assert handed_back, tasks
        assert {t["worker_id"] for t in handed_back} <= {w.worker_id for w in others}, tasks
        victim_log = victim.log_text().splitlines()
        [drain_line] = [line for line in victim_log if "action=worker_draining" in line]
        assert f"returned={len(handed_back)}" in drain_line, drain_line
        # A handed-back task may be pushed to the victim once more before the coordinator
        # has heard that it is draining; the victim refuses it and it goes elsewhere, one
        # attempt later. Every attempt beyond the second must be such a refusal.
        refused = sum(
            logged_count(line)
            for line in victim_log
            if "action=tasks_rejected" in line and "draining=True" in line
        )
        assert sum(t["attempt"] - 2 for t in handed_back) <= refused, (refused, tasks)
        assert_each_ran_once([victim, *others], set(task_ids))
        assert all(w.returncode is None for w in others)


# ---------------------------------------------------------------------------- cancel, timeout


async def test_cancelling_a_running_task_kills_its_process(cluster: Cluster) -> None:
    with trio.fail_after(60):
        [worker] = await cluster.start_servers(workers=1, executor="shell", **FAST)
        coordinator = cluster.coordinator
        assert coordinator is not None
        command = sleep_command(30)
        created = await cluster.post("/tasks", {"command": command})
        task_id = created["task_id"]
        await cluster.wait_task(task_id, status_is("running"))

        async def process_running() -> list[int] | None:
            return pids_with_cmdline(command) or None

        await cluster.wait_until(process_running, f"{command!r} to run")

        response = await cluster.client.post(cluster.url(f"/tasks/{task_id}/cancel"))
        assert response.status_code == 200, response.text
        cancelled = response.json()
        assert cancelled["status"] == "cancelled", cancelled
        assert cancelled["cancelled_at"] is not None, cancelled

        async def process_gone() -> bool:
            return not pids_with_cmdline(command)

        await cluster.wait_until(process_gone, f"{command!r} to be killed", timeout=5)
        assert worker.returncode is None

        async def cancel_reported() -> bool:
            return (
                task_id in logged_task_ids([worker], "task_cancel")
                and task_id in logged_task_ids([worker], "task_finished")
                and task_id in logged_task_ids([coordinator], "stale_report")
            )

        # The worker's own report ("cancelled") arrives after the API already cancelled
        # the task: the coordinator ignores it as stale, and the task stays as it was.
        await cluster.wait_until(cancel_reported, "the worker's cancel and its late report")
        [finished] = [
            line
            for line in worker.log_text().splitlines()
            if "action=task_finished" in line and task_id in line
        ]
        assert "outcome=cancelled" in finished or "cancelled=True" in finished, finished
        assert await cluster.get(f"/tasks/{task_id}") == cancelled

        again = await cluster.client.post(cluster.url(f"/tasks/{task_id}/cancel"))
        assert again.status_code == 409, again.text
        assert "error" in again.json()


async def test_a_task_over_its_timeout_fails_and_its_process_is_killed(cluster: Cluster) -> None:
    with trio.fail_after(60):
        [worker] = await cluster.start_servers(workers=1, executor="shell", **FAST)
        command = sleep_command(10)
        created = await cluster.post("/tasks", {"command": command, "timeout_s": 1})
        task = await cluster.wait_task(created["task_id"], timeout=8)

        assert task["status"] == "failed", task
        assert task["error"] == "timeout", task
        assert task["attempt"] == 1 and task["worker_id"] == worker.worker_id, task
        ran_for = parse_time(task["failed_at"]) - parse_time(task["started_at"])
        assert timedelta(seconds=1) <= ran_for < timedelta(seconds=4), task

        async def process_gone() -> bool:
            return not pids_with_cmdline(command)

        await cluster.wait_until(process_gone, f"{command!r} to be killed", timeout=5)


# ---------------------------------------------------------------------------- retries


async def test_a_failing_task_is_retried_with_backoff_then_fails(cluster: Cluster) -> None:
    with trio.fail_after(60):
        [worker] = await cluster.start_servers(workers=1, executor="shell", **FAST)
        created = await cluster.post("/tasks", {"command": "exit 1", "max_attempts": 3})
        task_id = created["task_id"]
        first_due = parse_time(created["scheduled_at"])

        def waiting_for_retry(task: Task) -> bool:
            assert task["status"] != "failed", f"failed before retrying: {task}"
            return bool(task["status"] == "scheduled" and task["attempt"] == 1)

        asked_at = datetime.now(UTC)
        retry = await cluster.wait_task(task_id, waiting_for_retry, timeout=10)
        assert "exit code 1" in retry["error"], retry
        assert retry["exit_code"] == 1, retry
        assert retry["picked_at"] is None and retry["started_at"] is None, retry
        assert retry["failed_at"] is None and retry["worker_id"] == worker.worker_id, retry
        # First retry delay: 1 s with jitter in [0.5 s, 1 s), from the failure.
        retry_due = parse_time(retry["scheduled_at"])
        assert retry_due >= first_due + timedelta(seconds=0.5), (created, retry)
        assert retry_due > asked_at, (asked_at, retry)

        task = await cluster.wait_task(task_id, timeout=15)
        assert task["status"] == "failed", task
        assert task["attempt"] == 3, task
        assert task["exit_code"] == 1 and "exit code 1" in task["error"], task
        assert task["failed_at"] is not None and task["completed_at"] is None, task
        # Second delay 2 s with jitter: the last run was due at least 0.5 + 1 s after the first.
        assert parse_time(task["scheduled_at"]) >= first_due + timedelta(seconds=1.5), task
        assert logged_task_ids([worker], "task_finished")[task_id] == 3


# ---------------------------------------------------------------------------- database outage

KILL_CONNECTIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = $1 AND pid <> pg_backend_pid()"
)


async def test_a_database_outage_is_survived(cluster: Cluster, database_url: str) -> None:
    """The database flaps (every connection killed, again and again), then refuses all
    connections for a while, then comes back. Services answer 503 meanwhile, never 500,
    and never exit; tasks acknowledged or running meanwhile complete, each once."""
    name = urlsplit(database_url).path.lstrip("/")
    admin_url = with_database(database_url, "postgres")
    with trio.fail_after(90):
        workers = await cluster.start_servers(workers=2, executor="shell", **FAST)
        created = await cluster.submit_many([{"command": sleep_command(4)} for _ in range(3)])
        running_ids = [t["task_id"] for t in created]
        before = await cluster.wait_tasks(running_ids, status_is("running"))

        async def ready() -> bool:
            response = await cluster.client.get(cluster.url("/readyz"))
            assert response.status_code in (200, 503), response.text
            return response.status_code == 200

        # Flapping: kill every connection of the database ten times, asking in between.
        acknowledged: list[str] = []
        answers: Counter[str] = Counter()
        for round_ in range(10):
            await query_database(admin_url, KILL_CONNECTIONS, name)
            probe = await cluster.client.get(cluster.url("/readyz"))
            post = await cluster.client.post(cluster.url("/tasks"), json={"command": "echo flap"})
            answers[f"readyz {probe.status_code}"] += 1
            answers[f"post {post.status_code}"] += 1
            assert probe.status_code in (200, 503), (round_, probe.text)
            assert post.status_code in (201, 503), (round_, post.text)
            if post.status_code == 201:
                acknowledged.append(post.json()["task_id"])
            assert all(p.returncode is None for p in cluster.procs), (round_, cluster.procs)
            await cluster.wait_until(ready, "GET /readyz to say 200 again")
        print(f"answers while flapping: {dict(answers)}")

        # Outage: new connections refused, existing ones killed.
        try:
            await query_database(admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await query_database(admin_url, KILL_CONNECTIONS, name)

            async def not_ready() -> httpx.Response | None:
                response = await cluster.client.get(cluster.url("/readyz"))
                assert response.status_code in (200, 503), response.text
                return response if response.status_code == 503 else None

            unready = await cluster.wait_until(not_ready, "GET /readyz to say 503")
            assert "error" in unready.json(), unready.text

            refused = await cluster.client.post(cluster.url("/tasks"), json={"command": "x"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/json"
            assert "error" in refused.json(), refused.text

            # The running tasks end while the database is away; their reports wait.
            async def all_finished_on_workers() -> bool:
                return set(running_ids) <= set(logged_task_ids(workers, "task_finished"))

            await cluster.wait_until(all_finished_on_workers, "the sleeps to end", timeout=10)
            still = await cluster.client.get(cluster.url("/readyz"))
            assert still.status_code == 503, still.text
            assert all(p.returncode is None for p in cluster.procs), cluster.procs
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await query_database(admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        await cluster.wait_until(ready, "GET /readyz to say 200 again", timeout=20)
        after = await cluster.post("/tasks", {"command": "echo back"})
        done = await cluster.wait_task(after["task_id"], timeout=20)
        assert done["status"] == "completed" and done["output"].strip() == "back", done

        tasks = await cluster.wait_tasks(running_ids, timeout=20)
        for old, task in zip(before, tasks, strict=True):
            assert task["status"] == "completed", task
            assert task["attempt"] == 1 and task["worker_id"] == old["worker_id"], task
        flapped = await cluster.wait_tasks(acknowledged, timeout=20)
        assert all(t["status"] == "completed" for t in flapped), flapped
        assert_each_ran_once(workers, {*running_ids, *acknowledged, after["task_id"]})
        assert all(p.returncode is None for p in cluster.procs), cluster.procs


# ---------------------------------------------------------------------------- two coordinators


async def test_two_coordinators_share_one_database_without_running_a_task_twice(
    cluster: Cluster, database_url: str
) -> None:
    total, batch = 5000, 1000
    with trio.fail_after(120):
        scheduler = await cluster.start_scheduler(wait=False)
        coordinator_b = await cluster.start_coordinator(name="coordinator-b", wait=False, **FAST)
        coordinator_a = await cluster.start_coordinator(name="coordinator-a", wait=False, **FAST)
        on_a = [await cluster.start_worker(coordinator=coordinator_a.address) for _ in range(2)]
        on_b = [await cluster.start_worker(coordinator=coordinator_b.address)]
        workers = [*on_a, *on_b]
        await cluster.wait_http_ready(scheduler)
        await cluster.wait_listening(coordinator_a)
        await cluster.wait_listening(coordinator_b)
        await cluster.wait_for_workers(workers)

        task_ids: set[str] = set()
        for start in range(0, total, batch):
            created = await cluster.submit_many(
                [{"command": f"shared {i}"} for i in range(start, start + batch)]
            )
            task_ids |= {t["task_id"] for t in created}
        assert len(task_ids) == total

        counts = await wait_all_finished(cluster, database_url, total, timeout=90)
        assert counts == Counter({"completed": total}), counts

        rows = await query_database(
            database_url,
            "SELECT worker_id, coordinator_id, min(attempt) AS lo, max(attempt) AS hi,"
            " count(*) AS n FROM tasks GROUP BY 1, 2",
        )
        assert {r["worker_id"] for r in rows} == {w.worker_id for w in workers}, rows
        # Both coordinators claimed tasks, each only for its own workers.
        coordinators = {r["worker_id"]: r["coordinator_id"] for r in rows}
        assert len({coordinators[w.worker_id] for w in workers}) == 2, rows
        assert coordinators[on_a[0].worker_id] == coordinators[on_a[1].worker_id], rows
        assert_each_ran_once(workers, task_ids)
        # Nothing failed, so every task was dispatched once: no claim was shared, and no
        # push went beyond the credit a worker advertised (a refused push is re-dispatched).
        refused = [
            line
            for proc in cluster.procs
            for line in proc.log_text().splitlines()
            if "action=tasks_rejected" in line or "action=push_undone" in line
        ]
        assert all(r["lo"] == r["hi"] == 1 for r in rows), (rows, refused)


# ---------------------------------------------------------------------------- idempotency


async def test_concurrent_duplicate_submissions_create_one_task(
    cluster: Cluster, database_url: str
) -> None:
    with trio.fail_after(60):
        await cluster.start_scheduler()
        key = f"e2e-{uuid.uuid4()}"
        body = {"command": "only once", "idempotency_key": key}
        responses: list[httpx.Response] = []

        async def submit() -> None:
            responses.append(await cluster.client.post(cluster.url("/tasks"), json=body))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(submit)

        assert sorted(r.status_code for r in responses) == [200] * 19 + [201], [
            (r.status_code, r.text) for r in responses
        ]
        tasks = [r.json() for r in responses]
        assert len({t["task_id"] for t in tasks}) == 1, tasks
        assert all(t["command"] == "only once" for t in tasks), tasks
        listed = (await cluster.get("/tasks?limit=100"))["tasks"]
        assert [t["task_id"] for t in listed] == [tasks[0]["task_id"]], listed
        rows = await query_database(
            database_url, "SELECT count(*) AS n FROM tasks WHERE idempotency_key = $1", key
        )
        assert rows[0]["n"] == 1
