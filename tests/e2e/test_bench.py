"""`tm bench`, run as a user runs it: the --quick plan, its exit code, table and JSON.

These check that every figure is measured (> 0) and that the bench cleans up after
itself; they assert nothing about the figures' size (a shared test machine is no place
to time anything).
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from click.testing import CliRunner

import tm.cli
from tests.e2e.cluster import open_cluster, query_database
from tm.bench.api import BenchError, bench_ingest_batch
from tm.bench.model import BenchPlan, Progress
from tm.bench.run import embedded_postgres
from tm.devdb import DevDatabaseError

pytestmark = pytest.mark.e2e

BENCH_TIMEOUT = 150  # the quick plan takes about 40 s on two shared cores
TOKEN = "bench-token-123"


def assert_latency(figures: dict[str, float]) -> None:
    for key in ("p50", "p95", "p99", "max", "count"):
        assert figures[key] > 0, (key, figures)
    assert figures["started_early"] == 0, figures


async def test_quick_bench_on_its_own_cluster_measures_everything(
    pg_server_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    async with open_cluster(pg_server_url, tmp_path / "logs") as cluster:
        before = {row[0] for row in await query_database(
            pg_server_url, "SELECT datname FROM pg_database WHERE datname LIKE 'tm_bench_%'")}
        ran = await cluster.run_cli("bench", "--quick", "--json", str(out),
                                    "--database-url", pg_server_url, timeout=BENCH_TIMEOUT)
        after = {row[0] for row in await query_database(
            pg_server_url, "SELECT datname FROM pg_database WHERE datname LIKE 'tm_bench_%'")}
    assert ran.returncode == 0, ran.stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())

    assert result["mode"] == "own"
    assert result["skipped"] == {}
    assert result["errors"] == 0
    assert result["ingest_single_rps"] > 0
    assert result["ingest_batch_tps"] > 0
    assert result["ingest_batch_concurrent_tps"] > 0
    assert result["drain_tps"] and all(tps > 0 for tps in result["drain_tps"].values())
    assert set(result["drain_tps"]) == {str(n) for n in result["plan"]["drain_workers"]}
    assert_latency(result["latency_ms"])
    assert result["history_rows"] == result["plan"]["history_rows"] > 0
    assert result["history_drain_tps"] > 0
    assert_latency(result["history_latency_ms"])
    assert result["backlog_tasks"] == result["plan"]["backlog_tasks"] > 0
    assert result["backlog_drain_tps"] > 0
    assert result["backlog_coordinator_rss_mb"] > 0
    assert result["backlog_coordinator_rss_mb"] == result["backlog_peak_rss_mb"]["coordinator"]
    for peaks in (result["peak_rss_mb"], result["backlog_peak_rss_mb"]):
        assert set(peaks) == {"scheduler", "coordinator", "worker"}, peaks
        assert all(mb > 0 for mb in peaks.values()), peaks

    table = ran.stdout.decode()
    assert result["plan"]["scheduler_processes"] == 2
    assert "| single-task ingest, c=16, 2 scheduler processes |" in table
    assert "| peak RSS, coordinator, 20,000-task due backlog |" in table
    assert "| tasks started before due | 0 |" in table
    assert "not measured" not in table
    # Its database is dropped afterwards (others' benches may come and go meanwhile).
    assert not (after - before), after - before


async def test_quick_bench_against_a_running_cluster_over_http(
    database_url: str, tmp_path: Path
) -> None:
    """--url with a token: the HTTP phases are measured, the others marked skipped, and
    the cluster is left with no task of the bench still scheduled."""
    out = tmp_path / "bench.json"
    with trio.fail_after(BENCH_TIMEOUT + 60):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            cluster.client.headers["Authorization"] = f"Bearer {TOKEN}"
            await cluster.start_scheduler("--api-token", TOKEN)
            await cluster.start_coordinator()
            await cluster.start_workers(3, concurrency=20)
            url = cluster.http_url or ""

            refused = await cluster.run_cli("bench", "--quick", "--url", url,
                                            "--api-token", "wrong")
            assert refused.returncode == 1
            message = refused.stderr.decode().strip()
            assert len(message.splitlines()) == 1, message
            assert "401" in message and "--api-token" in message, message

            # the batch phase's lean client does not read answers: a refused batch still
            # stops the bench with the server's reason
            with pytest.raises(BenchError) as batch_refused:
                await bench_ingest_batch(url, BenchPlan.quick(), Progress(), token="wrong",
                                         clients=2)
            assert "POST" in str(batch_refused.value) and "401" in str(batch_refused.value)

            ran = await cluster.run_cli("bench", "--quick", "--json", str(out), "--url", url,
                                        "--api-token", TOKEN, timeout=BENCH_TIMEOUT)
            assert ran.returncode == 0, ran.stderr.decode()[-3000:]
            left = await cluster.get("/tasks?status=scheduled&limit=10")
            rows = await query_database(
                database_url, "SELECT status, count(*) FROM tasks GROUP BY status")

    result: dict[str, Any] = json.loads(out.read_text())
    assert result["mode"] == "url"
    assert result["target"] == url
    assert result["errors"] == 0
    assert result["ingest_single_rps"] > 0
    assert result["ingest_batch_tps"] > 0
    assert result["ingest_batch_concurrent_tps"] > 0
    assert result["cluster_workers"] == 3
    assert set(result["drain_tps"]) == {"cluster"}
    assert result["drain_tps"]["cluster"] > 0
    assert_latency(result["latency_ms"])

    assert set(result["skipped"]) == {"drain_by_worker_count", "history", "backlog",
                                      "peak_rss"}
    assert all("--url" in reason for reason in result["skipped"].values())
    for name in ("history_rows", "history_drain_tps", "history_latency_ms", "backlog_tasks",
                 "backlog_drain_tps", "backlog_coordinator_rss_mb", "backlog_peak_rss_mb",
                 "peak_rss_mb"):
        assert result[name] is None, name
    table = ran.stdout.decode()
    assert "| peak RSS | not measured (--url) |" in table
    assert "| single-task ingest, c=16 |" in table  # its processes are not the bench's
    assert "due backlog | not measured (--url) |" in table

    # Ingest tasks were cancelled; drain and latency tasks ran; nothing is left waiting.
    assert left["tasks"] == []
    counts = {row[0]: row[1] for row in rows}
    assert counts["cancelled"] == result["cancelled_after_ingest"] > 0
    assert set(counts) == {"cancelled", "completed"}, counts


def test_unreachable_default_database_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No --database-url and nothing listening at the default: say so, suggest --embedded."""
    monkeypatch.delenv("TM_DATABASE_URL", raising=False)
    monkeypatch.setattr(tm.cli, "DEFAULT_DATABASE_URL",
                        "postgresql://postgres@127.0.0.1:1/taskmaster")
    ran = CliRunner().invoke(tm.cli.main, ["bench", "--quick"])
    assert ran.exit_code == 1, ran.output
    message = ran.output.strip()
    assert len(message.splitlines()) == 1, message
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in message
    assert "--embedded" in message
    assert "Traceback" not in message


def test_embedded_postgres_runs_for_the_bench_and_is_thrown_away() -> None:
    """--embedded's server: reachable while the bench runs, stopped and deleted after."""
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("tm-bench-pg-*"))
    try:
        with embedded_postgres() as url:
            rows = trio.run(query_database, url, "SELECT current_setting('fsync')")
            assert rows[0][0] == "on"  # durable, unlike `tm dev`'s: real figures
            ours = set(temp.glob("tm-bench-pg-*")) - before
    except DevDatabaseError as exc:
        pytest.skip(f"no PostgreSQL binaries: {exc}")
    assert len(ours) == 1, ours
    assert not any(root.exists() for root in ours)
    port = urlsplit(url).port
    assert port is not None
    with pytest.raises(OSError):  # the server is stopped
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
