"""`tm dev` with no database configured: a private PostgreSQL under --data-dir, kept
between runs, driven through the CLI, stopped cleanly by Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import trio

from tests.e2e.cluster import open_cluster
from tm.devdb import cluster_dir

pytestmark = pytest.mark.e2e


async def test_dev_with_its_own_postgres_keeps_data_and_stops_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "tmdata"
    with trio.fail_after(150):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            dev = await cluster.start_dev(workers=1, data_dir=data_dir)
            await cluster.wait_workers(1)
            assert "TaskMaster is running" in dev.log_text()
            assert "curl -X POST" in dev.log_text()

            submitted = await cluster.run_cli("submit", "hello from dev", "--json",
                                              "--url", cluster.http_url or "")
            assert submitted.returncode == 0, submitted.stderr.decode()
            task_id = json.loads(submitted.stdout)["task_id"]
            watched = await cluster.run_cli("watch", task_id, "--url", cluster.http_url or "")
            assert watched.returncode == 0, watched.stderr.decode()
            assert b"completed" in watched.stdout

            assert await cluster.stop(dev, signal.SIGINT, timeout=40) == 0
            pgdata = cluster_dir(data_dir) / "pgdata"
            assert (pgdata / "PG_VERSION").exists()
            assert not (pgdata / "postmaster.pid").exists(), "PostgreSQL left running"

            # A second run finds the first run's task: the data is kept.
            again = await cluster.start_dev(workers=1, data_dir=data_dir)
            shown = await cluster.run_cli("status", task_id, "--json",
                                          "--url", cluster.http_url or "")
            assert shown.returncode == 0, shown.stderr.decode()
            assert json.loads(shown.stdout)["status"] == "completed"
            assert await cluster.stop(again, signal.SIGINT, timeout=40) == 0
    shutil.rmtree(cluster_dir(data_dir), ignore_errors=True)
