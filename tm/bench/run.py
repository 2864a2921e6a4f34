"""The benchmark: ingest, drain and due→started latency on a cluster of real processes.

Phases with a cluster the bench starts itself (figures are printed as a table and written
as JSON with --json):

1. single-task ingest: POST /tasks, one task per request, 16 concurrent clients.
2. batch ingest: POST /tasks with 10,000 tasks per request.
3. drain: N due `echo` tasks inserted at once, time until all are completed, with 1, 3
   and 6 workers (each worker: concurrency 20, queue 500).
4. latency: 200 tasks/s, each scheduled 1 s ahead, for 20 s; due→started percentiles
   from the stored `scheduled_at` / `started_at`.
5. 3 and 4 again with 1,000,000 finished tasks in the table.
6. a due backlog of 1,000,000 tasks worked on by 3 workers for 15 s: tasks/s, and the
   peak RSS of every process while it lasts (is the coordinator's memory bounded by
   what it holds, not by what is due?).
7. peak RSS of every process over the whole run (VmHWM).

Tasks submitted in phases 1-2 are due far in the future and deleted afterwards, so they
do not disturb the drain; each phase deletes its tasks (the history rows excepted) before
the next one starts.

The cluster runs against a fresh database (created, then dropped) on the server of
--database-url, or on a private PostgreSQL started for the run (--embedded, tm/devdb.py).
With --url, a running cluster is measured over HTTP instead: see tm/bench/remote.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio
import trio_asyncio

from tm.aio.pg import Database, DatabaseUnavailable, open_database
from tm.bench.api import BenchError, bench_ingest_batch, bench_ingest_single, one_line
from tm.bench.cluster import BenchCluster, BenchProcess, peak_rss_mb, rss_mb
from tm.bench.load import Target
from tm.bench.model import BenchPlan, BenchResult, Progress, as_json, percentiles, render
from tm.core.timefmt import format_time
from tm.exceptions import find_exception

__all__ = ["BenchError", "BenchPlan", "BenchResult", "main", "render", "run_bench"]


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


@dataclass(eq=False)
class PhaseMemory:
    """The peak RSS of each process while one phase lasts.

    VmHWM is a peak over a process's whole life. If it grew during the phase, its new
    value is the phase's peak exactly; if it did not, the phase's peak is the largest
    VmRSS sampled (every `interval` s), which can miss a spike shorter than that. A
    process started during the phase has no earlier life: its VmHWM is the phase's peak.
    """

    hwm_before: dict[BenchProcess, float] = field(default_factory=dict)
    rss_max: dict[BenchProcess, float] = field(default_factory=dict)
    hwm_now: dict[BenchProcess, float] = field(default_factory=dict)

    @classmethod
    def start(cls, processes: list[BenchProcess]) -> PhaseMemory:
        memory = cls()
        for proc in processes:
            hwm = peak_rss_mb(proc.process.pid)
            if hwm is not None:
                memory.hwm_before[proc] = hwm
        return memory

    def sample(self, processes: list[BenchProcess]) -> None:
        for proc in processes:
            rss = rss_mb(proc.process.pid)
            hwm = peak_rss_mb(proc.process.pid)
            if rss is not None:
                self.rss_max[proc] = max(self.rss_max.get(proc, 0.0), rss)
            if hwm is not None:
                self.hwm_now[proc] = hwm

    async def run(self, cluster: BenchCluster, interval: float = 0.1) -> None:
        """Sample the cluster's processes until cancelled."""
        while True:
            self.sample(list(cluster.processes))
            await trio.sleep(interval)

    def peaks_by_role(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for proc, hwm in self.hwm_now.items():
            before = self.hwm_before.get(proc)
            peak = hwm if before is None or hwm > before else self.rss_max.get(proc, 0.0)
            peaks[proc.role] = round(max(peaks.get(proc.role, 0.0), peak), 1)
        return peaks


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


async def run_bench(database_url: str, plan: BenchPlan, result: BenchResult | None = None,
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


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """A private PostgreSQL for one run (tm/devdb.py, as `tm dev` uses), thrown away after.

    Durable settings (fsync on), unlike `tm dev`'s: the figures should be those of a real
    server.
    """
    from tm.devdb import run_postgres

    root = Path(tempfile.mkdtemp(prefix="tm-bench-pg-"))
    try:
        with run_postgres(root, fast=False) as url:
            yield url
    finally:
        location = root / "pgdata-location"  # where devdb put it, if not under root
        if location.exists():
            shutil.rmtree(location.read_text().strip(), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def new_result(plan: BenchPlan) -> BenchResult:
    return BenchResult(plan=asdict(plan), started_at=format_time(datetime.now(UTC)) or "")




@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the bench the way Ctrl-C does: its processes stopped, its database
    dropped, its private PostgreSQL stopped. (Python's default would die on the spot and
    leave all of them running.) Not when SIGINT is ignored (a background job)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_mode(plan: BenchPlan, result: BenchResult, *, database_url: str | None,
              default_url: bool, embedded: bool, url: str | None, token: str | None) -> None:
    try:
        if url is not None:
            from tm.bench.remote import run_remote

            trio.run(run_remote, url, token, plan, result)
        elif embedded:
            from tm.devdb import DevDatabaseError

            with contextlib.ExitStack() as stack:
                try:
                    pg_url = stack.enter_context(embedded_postgres())
                except DevDatabaseError as exc:
                    raise BenchError(
                        one_line(f"cannot start a private PostgreSQL: {exc}")
                    ) from None
                result.mode = "embedded"
                trio.run(run_bench, pg_url, plan, result)
        else:
            assert database_url is not None
            trio.run(lambda: run_bench(database_url, plan, result, default_url=default_url))
    except BaseExceptionGroup as group:
        # Errors come out of trio's nurseries wrapped in groups: show the one that says
        # why (a BenchError), or stop as Ctrl-C stops a command (click: "Aborted!").
        error = find_exception(group, BenchError)
        if error is not None:
            raise error from None
        if find_exception(group, KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


def main(
    *,
    quick: bool,
    json_path: Path | None,
    database_url: str | None = None,
    default_url: bool = False,
    embedded: bool = False,
    url: str | None = None,
    token: str | None = None,
) -> BenchResult:
    """Run the bench in one of its three modes: `url` (a running cluster), `embedded` (own
    cluster on a private PostgreSQL) or own cluster on `database_url`'s server. Raises
    BenchError (one line) when it cannot run."""
    plan = BenchPlan.quick() if quick else BenchPlan()
    start = time.monotonic()
    result = new_result(plan)
    with _sigterm_as_ctrl_c():
        _run_mode(plan, result, database_url=database_url, default_url=default_url,
                  embedded=embedded, url=url, token=token)
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(result), indent=2) + "\n")
    print(render(result))
    print(f"\n(took {time.monotonic() - start:.0f} s)")
    return result
