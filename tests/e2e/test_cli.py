"""End to end: the `tm` client commands as a user runs them, against real processes.

Each CLI call is a subprocess (`Cluster.run_cli`) against a scheduler + coordinator + one
`shell` worker on loopback; we check what a user or script sees: stdout, stderr and the
exit status (0 ok, 1 API said no / watched task failed, 2 usage, 3 unreachable). Every test
is bounded by `trio.fail_after`.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from tests.e2e.cluster import Cluster, free_port, open_cluster, parse_time

pytestmark = pytest.mark.e2e

CLIENT_COMMANDS = ("submit", "status", "tasks", "cancel", "workers", "watch")
LIFECYCLE = ("scheduled", "picked", "running", "completed", "failed", "cancelled")


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(database_url, tmp_path / "logs") as running:
        yield running


@pytest.fixture
async def offline(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A harness that starts no service: only for `run_cli`."""
    async with open_cluster("postgresql://unused.invalid/none", tmp_path / "logs") as harness:
        yield harness


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, (result.args, result.returncode, out(result), err(result))
    return out(result)


def watched_statuses(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()]


async def test_submit_status_tasks_workers_and_watch(cluster: Cluster) -> None:
    with trio.fail_after(90):
        [worker] = await cluster.start_servers(workers=1, executor="shell")
        url = ["--url", cluster.url("")]

        before = datetime.now(UTC)
        soon, later = await cluster.run_clis(
            ["submit", "printf soon", "--at", "in 2s", "--json", *url],
            ["submit", "sleep 1; printf later", "--at", "+6s", "-q", *url],
        )
        after = datetime.now(UTC)

        # --json: exactly one JSON document, the API's task.
        task = json.loads(ok(soon))
        assert task["command"] == "printf soon" and task["status"] == "scheduled", task
        scheduled_at = parse_time(task["scheduled_at"])
        assert before + timedelta(seconds=2) <= scheduled_at <= after + timedelta(seconds=2)
        # -q: the id alone.
        later_id = ok(later).strip()
        assert uuid.UUID(later_id)

        # watch: one line per change, from scheduled to completed, in lifecycle order; exit 0.
        watched = await cluster.run_cli("watch", later_id, "--interval", "0.1", *url)
        statuses = watched_statuses(ok(watched))
        assert statuses[0] == "scheduled", out(watched)
        assert "running" in statuses and statuses[-1] == "completed", out(watched)
        assert statuses == sorted(set(statuses), key=LIFECYCLE.index), out(watched)
        last = out(watched).splitlines()[-1]
        assert f"worker={worker.worker_id}" in last and "exit_code=0" in last, last

        finished = await cluster.wait_task(task["task_id"])
        assert finished["status"] == "completed", finished
        task_id = task["task_id"]

        shown, shown_json, completed, scheduled, listed = await cluster.run_clis(
            ["status", task_id, *url],
            ["status", task_id, "--json", *url],
            ["tasks", "--status", "completed", *url],
            ["tasks", "--status", "scheduled", *url],
            ["workers", *url],
        )
        # status: a key/value block of every field.
        block = ok(shown).splitlines()
        assert re.fullmatch(rf"task_id\s+{task_id}", block[0]), block
        assert any(re.fullmatch(r"status\s+completed", line) for line in block), block
        assert any(re.fullmatch(r"output\s+soon", line) for line in block), block
        assert json.loads(ok(shown_json)) == finished

        # tasks: a table with a header; filtered by status.
        header, *rows = ok(completed).splitlines()
        assert header.split()[:2] == ["TASK_ID", "STATUS"], header
        assert {row.split()[0] for row in rows} == {task_id, later_id}, rows
        assert all(row.split()[1] == "completed" for row in rows), rows
        assert ok(scheduled).strip() == "no tasks"

        header, row = ok(listed).splitlines()
        assert header.split()[:2] == ["WORKER_ID", "STATE"], header
        assert row.split()[:2] == [worker.worker_id, "active"], row


async def test_refusals_exit_1_with_the_apis_message(cluster: Cluster) -> None:
    with trio.fail_after(90):
        await cluster.start_servers(workers=1, executor="shell")
        url = ["--url", cluster.url("")]

        failing, future = await cluster.run_clis(
            ["submit", "echo oops; exit 7", "-q", *url],
            ["submit", "echo never", "--at", "in 1h", "-q", *url],
        )
        failing_id, future_id = ok(failing).strip(), ok(future).strip()

        # A watched task that fails: exit 1, the last line says why.
        watched = await cluster.run_cli("watch", failing_id, "--interval", "0.1", *url)
        assert watched.returncode == 1, (out(watched), err(watched))
        last = out(watched).splitlines()[-1]
        assert last.split()[0] == "failed" and "exit_code=7" in last, last

        # Cancel twice: the second is refused (409) with the API's message on stderr.
        first = await cluster.run_cli("cancel", future_id, *url)
        assert any(re.fullmatch(r"status\s+cancelled", line) for line in ok(first).splitlines())
        second = await cluster.run_cli("cancel", future_id, *url)
        assert second.returncode == 1, (out(second), err(second))
        assert out(second) == ""
        assert err(second).startswith("error: 409"), err(second)
        assert f"task {future_id} already finished as cancelled" in err(second)

        # A cancelled task being watched: exit 1 too.
        watched = await cluster.run_cli("watch", future_id, *url)
        assert watched.returncode == 1 and watched_statuses(out(watched)) == ["cancelled"]

        unknown = str(uuid.uuid4())
        results = await cluster.run_clis(
            ["status", unknown, *url],
            ["watch", unknown, *url],
            ["cancel", unknown, *url],
            ["status", "not-a-uuid", *url],
        )
        for result in results:
            assert result.returncode == 1, (result.args, out(result), err(result))
            assert out(result) == ""
            assert err(result).startswith("error: 4"), err(result)
        for result in results[:3]:
            assert "404" in err(result) and unknown in err(result), err(result)


async def test_tasks_all_follows_the_cursors(cluster: Cluster) -> None:
    with trio.fail_after(60):
        await cluster.start_scheduler()
        url = ["--url", cluster.url("")]
        created = await cluster.submit_many([{"command": f"job {i}"} for i in range(7)])
        ids = [t["task_id"] for t in created]

        everything, page = await cluster.run_clis(
            ["tasks", "--all", "--limit", "2", "--json", *url],
            ["tasks", "--limit", "2", *url],
        )
        body = json.loads(ok(everything))
        assert body["next"] is None
        assert sorted(t["task_id"] for t in body["tasks"]) == sorted(ids)

        assert len(ok(page).splitlines()) == 3  # header + 2 rows
        cursor = re.search(r"--after (\S+)", err(page))
        assert cursor is not None, err(page)
        rest = await cluster.run_cli("tasks", "--after", cursor.group(1), "--json", *url)
        assert len(json.loads(ok(rest))["tasks"]) == 5


async def test_an_unreachable_scheduler_exits_3(offline: Cluster) -> None:
    with trio.fail_after(60):
        url = ["--url", f"http://127.0.0.1:{free_port()}"]
        some_id = str(uuid.uuid4())
        results = await offline.run_clis(
            ["submit", "echo x", *url],
            ["status", some_id, *url],
            ["tasks", *url],
            ["cancel", some_id, *url],
            ["workers", *url],
            ["watch", some_id, *url],
        )
        for result in results:
            assert result.returncode == 3, (result.args, out(result), err(result))
            assert out(result) == ""
            assert err(result).startswith("error: cannot reach http://127.0.0.1:"), err(result)


async def test_usage_errors_exit_2_before_any_request(offline: Cluster) -> None:
    with trio.fail_after(60):
        # Port 9 (discard) is never contacted: the arguments are refused first.
        url = ["--url", "http://127.0.0.1:9"]
        naive, unit, bad_url, bad_status = await offline.run_clis(
            ["submit", "x", "--at", "2026-11-27T03:31:57", *url],
            ["submit", "x", "--at", "in 5 fortnights", *url],
            ["status", "x", "--url", "127.0.0.1:8081"],
            ["tasks", "--status", "done", *url],
        )
        for result in (naive, unit, bad_url, bad_status):
            assert result.returncode == 2, (result.args, out(result), err(result))
            assert out(result) == ""
        assert "no UTC offset" in err(naive), err(naive)
        assert "unknown unit 'fortnights'" in err(unit), err(unit)
        assert "not an http(s) URL" in err(bad_url), err(bad_url)


async def test_help_shows_the_environment_variables_and_exit_codes(offline: Cluster) -> None:
    with trio.fail_after(60):
        results = await offline.run_clis(
            ["--help"], *[[command, "--help"] for command in CLIENT_COMMANDS]
        )
        top, *commands = results
        assert "Exit status" in ok(top) and "watch" in ok(top)
        for command, result in zip(CLIENT_COMMANDS, commands, strict=True):
            text = ok(result)
            assert "TM_URL" in text and "TM_API_TOKEN" in text and "TM_JSON" in text, command
            assert "3    scheduler unreachable" in text, command
