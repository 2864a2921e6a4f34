"""The benchmark: ingest, drain and due→started latency on a cluster of real processes.

Phases (figures are printed as a table and written as JSON with --json):

1. single-task ingest: POST /tasks, one task per request, 16 concurrent clients.
2. batch ingest: POST /tasks with 10,000 tasks per request.
3. drain: N due `echo` tasks inserted at once, time until all are completed, with 1, 3
   and 6 workers (each worker: concurrency 20, queue 500).
4. latency: 200 tasks/s, each scheduled 1 s ahead, for 20 s; due→started percentiles
   from the stored `scheduled_at` / `started_at`.
5. 3 and 4 again with 1,000,000 finished tasks in the table.
6. peak RSS of every process (VmHWM).

Tasks submitted in phases 1-2 are due far in the future and deleted afterwards, so they
do not disturb the drain.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_asyncio

from tm.aio.pg import Database, open_database
from tm.bench.cluster import BenchCluster
from tm.bench.load import build_request, run_load
from tm.core.timefmt import format_time


@dataclass(frozen=True)
class BenchPlan:
    ingest_seconds: float = 5.0
    ingest_concurrency: int = 16
    batch_size: int = 10_000
    batches: int = 10
    drain_tasks: int = 50_000
    drain_workers: tuple[int, ...] = (1, 3, 6)
    latency_rate: int = 200
    latency_seconds: float = 20.0
    latency_workers: int = 3
    history_rows: int = 1_000_000

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(
            ingest_seconds=1.0,
            batch_size=1000,
            batches=2,
            drain_tasks=2000,
            drain_workers=(1, 3),
            latency_rate=50,
            latency_seconds=2.0,
            history_rows=20_000,
        )


@dataclass
class BenchResult:
    plan: dict[str, Any]
    started_at: str
    ingest_single_rps: float = 0.0
    ingest_batch_tps: float = 0.0
    drain_tps: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    history_rows: int = 0
    history_drain_tps: float = 0.0
    history_latency_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    errors: int = 0


class Progress:
    """One line per step on stderr; redrawn in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def step(self, text: str, done: float | None = None) -> None:
        bar = ""
        if done is not None:
            filled = int(max(0.0, min(1.0, done)) * 30)
            bar = f" [{'#' * filled}{'.' * (30 - filled)}] {done * 100:5.1f}%"
        if self.tty:
            sys.stderr.write(f"\r\033[K{text}{bar}")
        elif done is None or done >= 1.0:
            sys.stderr.write(f"{text}{bar}\n")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": ordered[-1],
        "count": float(len(ordered)),
    }


FAR = "2999-01-01T00:00:00Z"


async def bench_ingest_single(url: str, plan: BenchPlan, progress: Progress) -> tuple[float, int]:
    """POST /tasks, one task per request, from `ingest_concurrency` keep-alive connections."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"command": "bench", "scheduled_at": FAR}).encode()
    request = build_request("POST", f"{host}:{port}", "/tasks", body)
    progress.step("single-task ingest", 0.0)
    result = await run_load(host, int(port), request, concurrency=plan.ingest_concurrency,
                            seconds=plan.ingest_seconds, expect=201)
    progress.step("single-task ingest", 1.0)
    return result.per_second, result.errors


async def bench_ingest_batch(url: str, plan: BenchPlan, progress: Progress) -> float:
    body = {"tasks": [{"command": "bench", "scheduled_at": FAR}] * plan.batch_size}
    payload = json.dumps(body)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        start = trio.current_time()
        for index in range(plan.batches):
            response = await client.post("/tasks", content=payload)
            response.raise_for_status()
            progress.step("batch ingest", (index + 1) / plan.batches)
        elapsed = trio.current_time() - start
    return plan.batch_size * plan.batches / elapsed


async def count_unfinished(db: Database) -> int:
    """Tasks not yet finished; cheap whatever the history (partial indexes)."""
    return int(
        await db.fetchval(
            "SELECT (SELECT count(*) FROM tasks WHERE status = 'scheduled')"
            " + (SELECT count(*) FROM tasks WHERE status IN ('picked', 'running'))"
        )
    )


CLEAR = "DELETE FROM tasks WHERE command <> 'history'"


async def bench_drain(
    db: Database, cluster: BenchCluster, workers: int, plan: BenchPlan, progress: Progress
) -> float:
    procs = await cluster.start_workers(workers)
    label = f"drain, {workers} worker{'s' if workers > 1 else ''}"
    await db.execute(
        """INSERT INTO tasks (task_id, command, scheduled_at)
           SELECT gen_random_uuid(), 'bench ' || i, clock_timestamp() - interval '1 second'
           FROM generate_series(1, $1) AS i""",
        plan.drain_tasks,
    )
    start = trio.current_time()
    with trio.fail_after(600):
        while True:
            left = await count_unfinished(db)
            progress.step(label, 1 - left / plan.drain_tasks)
            cluster.sample()
            if left == 0:
                break
            await trio.sleep(0.05)
    elapsed = trio.current_time() - start
    await cluster.stop(procs)
    await db.execute(CLEAR)
    await cluster.wait_workers_gone()
    return plan.drain_tasks / elapsed


async def bench_latency(
    db: Database, cluster: BenchCluster, plan: BenchPlan, progress: Progress
) -> dict[str, float]:
    procs = await cluster.start_workers(plan.latency_workers)
    tick = 0.05
    per_tick = max(1, round(plan.latency_rate * tick))
    ticks = int(plan.latency_seconds / tick)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as client:
        next_at = trio.current_time()
        for index in range(ticks):
            at = format_time(datetime.now(UTC) + timedelta(seconds=1))
            response = await client.post(
                "/tasks", json={"tasks": [{"command": "latency", "scheduled_at": at}] * per_tick}
            )
            response.raise_for_status()
            progress.step("latency, steady stream", (index + 1) / ticks)
            next_at += tick
            await trio.sleep_until(next_at)
    with trio.fail_after(120):
        while await count_unfinished(db):
            cluster.sample()
            await trio.sleep(0.1)
    rows = await db.fetch(
        "SELECT extract(epoch FROM started_at - scheduled_at)::float8 * 1000 AS ms FROM tasks"
        " WHERE command = 'latency'"
    )
    await cluster.stop(procs)
    await db.execute(CLEAR)
    await cluster.wait_workers_gone()
    result = percentiles([row["ms"] for row in rows])
    early = sum(1 for row in rows if row["ms"] < 0)
    result["started_early"] = float(early)
    return result


async def add_history(db: Database, rows: int, progress: Progress) -> None:
    chunk = 200_000
    for offset in range(0, rows, chunk):
        await db.execute(
            """INSERT INTO tasks (task_id, command, status, scheduled_at, created_at, picked_at,
                                  started_at, completed_at, attempt, worker_id, exit_code, output)
               SELECT gen_random_uuid(), 'history', 'completed', t, t, t, t, t, 1, 'w-old', 0,
                      'history'
               FROM (SELECT clock_timestamp() - make_interval(secs => i) AS t
                     FROM generate_series(1, $1) AS i) AS s""",
            min(chunk, rows - offset),
        )
        progress.step("adding finished history", min(1.0, (offset + chunk) / rows))
    await db.execute("VACUUM ANALYZE tasks")


async def run_bench(database_url: str, plan: BenchPlan) -> BenchResult:
    progress = Progress()
    result = BenchResult(plan=asdict(plan), started_at=format_time(datetime.now(UTC)) or "")
    name = f"tm_bench_{uuid.uuid4().hex[:8]}"
    base = database_url.rsplit("/", 1)[0]
    bench_url = f"{base}/{name}"
    async with trio_asyncio.open_loop():
        async with open_database(f"{base}/postgres", max_size=1, create=False) as admin:
            await admin.execute(f"CREATE DATABASE {name}")
        try:
            with tempfile.TemporaryDirectory(prefix="tm-bench-") as logs:
                cluster = BenchCluster(bench_url, Path(logs))
                try:
                    await _phases(cluster, plan, result, progress)
                finally:
                    await cluster.close()
        finally:
            async with open_database(f"{base}/postgres", max_size=1, create=False) as admin:
                await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return result


async def _phases(
    cluster: BenchCluster, plan: BenchPlan, result: BenchResult, progress: Progress
) -> None:
    await cluster.start_servers()
    async with open_database(cluster.database_url, max_size=2) as db:
        result.ingest_single_rps, result.errors = await bench_ingest_single(
            cluster.url, plan, progress
        )
        result.ingest_batch_tps = await bench_ingest_batch(cluster.url, plan, progress)
        await db.execute(CLEAR)
        for workers in plan.drain_workers:
            result.drain_tps[str(workers)] = await bench_drain(db, cluster, workers, plan, progress)
        result.latency_ms = await bench_latency(db, cluster, plan, progress)
        await add_history(db, plan.history_rows, progress)
        result.history_rows = plan.history_rows
        result.history_drain_tps = await bench_drain(
            db, cluster, plan.latency_workers, plan, progress
        )
        result.history_latency_ms = await bench_latency(db, cluster, plan, progress)
    cluster.sample()
    result.peak_rss_mb = {role: round(mb, 1) for role, mb in cluster.peaks.items()}
    progress.done("benchmark finished")


def render(result: BenchResult) -> str:
    def ms(figures: dict[str, float]) -> str:
        if not figures:
            return "-"
        return " / ".join(f"{figures[k]:.1f}" for k in ("p50", "p95", "p99", "max"))

    lines = [
        "| figure | value |",
        "|---|---|",
        f"| single-task ingest, c={result.plan['ingest_concurrency']} | "
        f"{result.ingest_single_rps:,.0f} req/s |",
        f"| batch ingest ({result.plan['batch_size']:,}/request) | "
        f"{result.ingest_batch_tps:,.0f} tasks/s |",
    ]
    for workers, tps in result.drain_tps.items():
        lines.append(
            f"| drain {result.plan['drain_tasks']:,} tasks, {workers} workers | "
            f"{tps:,.0f} tasks/s |"
        )
    lines.append(
        f"| due→started ms p50/p95/p99/max ({result.plan['latency_rate']}/s) | "
        f"{ms(result.latency_ms)} |"
    )
    lines.append(
        f"| drain, {result.plan['latency_workers']} workers, with "
        f"{result.history_rows:,} finished | {result.history_drain_tps:,.0f} tasks/s |"
    )
    lines.append(
        f"| due→started ms with {result.history_rows:,} finished | "
        f"{ms(result.history_latency_ms)} |"
    )
    for role, mb in sorted(result.peak_rss_mb.items()):
        lines.append(f"| peak RSS, {role} | {mb:.0f} MB |")
    early = result.latency_ms.get("started_early", 0) + result.history_latency_ms.get(
        "started_early", 0
    )
    lines.append(f"| tasks started before due | {early:.0f} |")
    return "\n".join(lines)


def main(database_url: str, quick: bool, json_path: Path | None) -> BenchResult:
    plan = BenchPlan.quick() if quick else BenchPlan()
    start = time.monotonic()
    result = trio.run(run_bench, database_url, plan)
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(render(result))
    print(f"\n(took {time.monotonic() - start:.0f} s)")
    return result
