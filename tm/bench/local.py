"""The bench's own cluster: its phases, measured through the cluster's own database.

`run_local` creates a fresh database on the server of --database-url (dropped after),
starts real `tm` processes on loopback (tm.bench.cluster) and runs the phases of
tm.bench.run's docstring. Tasks for the drain, latency and backlog phases are inserted
straight into the database, shaped as the API would have made them (UUIDv7 ids), so that
the figures are the cluster's, not the bench client's; each phase deletes its tasks (the
history rows excepted) before the next one starts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import urlsplit

import httpx
import trio
import trio_asyncio

from tm.aio.pg import Database, DatabaseUnavailable, open_database
from tm.bench.api import BenchError, bench_ingest_batch, bench_ingest_single, one_line
from tm.bench.cluster import BenchCluster
from tm.bench.load import Target
from tm.bench.memory import PhaseMemory
from tm.bench.model import BenchPlan, BenchResult, Progress, new_result, percentiles
from tm.core.timefmt import format_time


async def count_unfinished(db: Database) -> int:
    """Tasks not yet finished; cheap whatever the history (partial indexes)."""
    return int(
        await db.fetchval(
            "SELECT (SELECT count(*) FROM tasks WHERE status = 'scheduled')"
            " + (SELECT count(*) FROM tasks WHERE status IN ('picked', 'running'))"
        )
    )


def uuid7_sql(at: str) -> str:
    """SQL for a task id made at time `at`, shaped like the API's (UUIDv7, tm.core.ids), so
    that rows inserted by the bench sit in the indexes as submitted tasks would."""
    return (
        "encode(set_byte(overlay(uuid_send(gen_random_uuid()) PLACING substring("
        f"int8send((extract(epoch FROM {at}) * 1000)::int8) FROM 3) FROM 1 FOR 6), "
        "6, 112 + (random() * 15)::int), 'hex')::uuid"
    )


CLEAR = "DELETE FROM tasks WHERE command <> 'history'"
MAY_CHECKPOINT = """
SELECT rolsuper OR CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg_checkpoint')
                        THEN pg_has_role('pg_checkpoint', 'MEMBER') ELSE false END
FROM pg_roles WHERE rolname = current_user
"""


async def bench_drain(
    db: Database, cluster: BenchCluster, workers: int, plan: BenchPlan, progress: Progress
) -> float:
    procs = await cluster.start_workers(workers)
    label = f"drain, {workers} worker{'s' if workers > 1 else ''}"
    await db.execute(
        f"""INSERT INTO tasks (task_id, command, scheduled_at)
            SELECT {uuid7_sql('clock_timestamp()')}, 'bench ' || i,
                   clock_timestamp() - interval '1 second'
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
            f"""INSERT INTO tasks (task_id, command, status, scheduled_at, created_at, picked_at,
                                   started_at, completed_at, attempt, worker_id, exit_code, output)
                SELECT {uuid7_sql('t')}, 'history', 'completed', t, t, t, t, t, 1, 'w-old', 0,
                       'history'
               FROM (SELECT clock_timestamp() - make_interval(secs => i) AS t
                     FROM generate_series(1, $1) AS i) AS s""",
            min(chunk, rows - offset),
        )
        progress.step("adding finished history", min(1.0, (offset + chunk) / rows))
    await db.execute("VACUUM ANALYZE tasks")
    # Write the million rows' pages out now, where a user would have had them written over
    # the months the history took to grow: otherwise the checkpoint they call for runs
    # through the phases measured next (seen: p99 latency 58 ms instead of 16). Only a
    # superuser or a member of pg_checkpoint may; without the right it is skipped.
    if await db.fetchval(MAY_CHECKPOINT):
        await db.execute("CHECKPOINT")


# ---------------------------------------------------------------------------- backlog


async def add_backlog(db: Database, tasks: int, progress: Progress) -> None:
    chunk = 200_000
    for offset in range(0, tasks, chunk):
        await db.execute(
            f"""INSERT INTO tasks (task_id, command, scheduled_at)
                SELECT {uuid7_sql('clock_timestamp()')}, 'backlog',
                       clock_timestamp() - interval '1 second'
                FROM generate_series(1, $1)""",
            min(chunk, tasks - offset),
        )
        progress.step("adding a due backlog", min(1.0, (offset + chunk) / tasks))


async def clear_backlog(db: Database) -> None:
    """Delete the backlog, then everything but the history.

    In slices: one DELETE of a million rows could outlast the pool's 30 s statement
    timeout. For the same reason no VACUUM (a million dead rows and their index entries):
    ANALYZE keeps the planner's figures right for whatever runs next, and autovacuum
    reclaims the space.
    """
    while True:
        deleted = await db.execute(
            "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks"
            " WHERE status = 'scheduled' LIMIT 100000)"
        )
        if deleted == "DELETE 0":
            break
    await db.execute(CLEAR)
    await db.execute("ANALYZE tasks")


async def bench_backlog(
    db: Database, cluster: BenchCluster, plan: BenchPlan, progress: Progress
) -> tuple[float, dict[str, float]]:
    """`backlog_tasks` due tasks and `latency_workers` workers for `backlog_seconds`:
    tasks completed per second, and each role's peak RSS from the insert to the end."""
    memory = PhaseMemory.start(list(cluster.processes))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(memory.run, cluster)
        await add_backlog(db, plan.backlog_tasks, progress)
        procs = await cluster.start_workers(plan.latency_workers)
        label = f"due backlog, {plan.latency_workers} workers"
        left_before = await count_unfinished(db)
        start = trio.current_time()
        while (elapsed := trio.current_time() - start) < plan.backlog_seconds:
            progress.step(label, elapsed / plan.backlog_seconds)
            cluster.sample()
            await trio.sleep(0.1)
        left_after = await count_unfinished(db)
        elapsed = trio.current_time() - start
        progress.step(label, 1.0)
        memory.sample(list(cluster.processes))
        nursery.cancel_scope.cancel()
    await cluster.stop(procs)
    await clear_backlog(db)
    await cluster.wait_workers_gone()
    return (left_before - left_after) / elapsed, memory.peaks_by_role()


# ---------------------------------------------------------------------------- the run


def _server(url: str) -> str:
    """host:port of a PostgreSQL URL (no user, no password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def unreachable(url: str, exc: BaseException, *, default_url: bool) -> str:
    reason = one_line(exc).removeprefix("database unavailable: ")
    if default_url:
        return (f"cannot reach PostgreSQL at {_server(url)} (the default --database-url; none "
                f"was given): {reason}. Run `tm bench --embedded` to start a private "
                "PostgreSQL for the bench, or give --database-url / TM_DATABASE_URL")
    return f"cannot reach PostgreSQL at {_server(url)} (--database-url): {reason}"


async def run_local(database_url: str, plan: BenchPlan, result: BenchResult | None = None,
                    *, default_url: bool = False) -> BenchResult:
    progress = Progress()
    if result is None:
        result = new_result(plan)
    name = f"tm_bench_{uuid.uuid4().hex[:8]}"
    base = database_url.rsplit("/", 1)[0]
    bench_url = f"{base}/{name}"
    async with trio_asyncio.open_loop():
        try:
            async with open_database(f"{base}/postgres", max_size=1, create=False,
                                     retry_for=0) as admin:
                await admin.execute(f"CREATE DATABASE {name}")
        except DatabaseUnavailable as exc:
            raise BenchError(unreachable(database_url, exc, default_url=default_url)) from None
        try:
            with TemporaryDirectory(prefix="tm-bench-") as logs:
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
    await cluster.start_servers(plan.scheduler_processes)
    async with open_database(cluster.database_url, max_size=2) as db:
        result.ingest_single_rps, result.errors = await bench_ingest_single(
            Target.from_url(cluster.url), plan, progress
        )
        result.ingest_batch_tps = await bench_ingest_batch(cluster.url, plan, progress)
        result.ingest_batch_concurrent_tps = await bench_ingest_batch(
            cluster.url, plan, progress, clients=plan.batch_clients
        )
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
        result.backlog_drain_tps, result.backlog_peak_rss_mb = await bench_backlog(
            db, cluster, plan, progress
        )
        result.backlog_tasks = plan.backlog_tasks
        result.backlog_coordinator_rss_mb = result.backlog_peak_rss_mb.get("coordinator", 0.0)
    cluster.sample()
    result.peak_rss_mb = {role: round(mb, 1) for role, mb in cluster.peaks.items()}
    progress.done("benchmark finished")
