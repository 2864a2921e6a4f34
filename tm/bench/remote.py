"""`tm bench --url`: measure a running cluster through its HTTP API only.

Nothing is started and the database is not touched; every figure comes from what the API
returns. What can be measured that way: single-task and batch ingest, a drain of due
tasks by the cluster's own workers, and due→started latency. Worker counts, a table with
a million finished tasks, a due backlog of a million tasks and the memory of the
processes are not under the bench's control there: those phases are skipped (and listed
in the result's `skipped`).

The bench's tasks are told apart from everyone else's by their command,
`: tm-bench <run id> <phase>` (`:` is the shell's no-op, so a worker with the `shell`
executor runs it harmlessly; `echo` records it). The API cannot delete tasks:

* ingest tasks (due in 2999) are cancelled right after the ingest phases, 16 requests
  at a time; they stay in the table as cancelled tasks;
* drain and latency tasks run, and stay as completed tasks.

Times come from the tasks as stored (`scheduled_at`, `started_at`, `completed_at`), so
the drain and latency figures do not depend on this machine's clock. Only the moment the
drain tasks become due is chosen on this machine's clock: if it is far off the cluster's,
the tasks are due sooner or later than planned, which the figure does not notice.
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import trio

from tm.bench.api import (
    FAR,
    BenchError,
    Task,
    any_unfinished,
    bench_ingest_batch,
    bench_ingest_single,
    call,
    created_at,
    find_tasks,
    finished_tasks,
    open_client,
    server_time,
)
from tm.bench.load import Target, run_requests
from tm.bench.model import NOT_MEASURED_URL, BenchPlan, BenchResult, Progress, percentiles
from tm.core.timefmt import format_time, parse_time

SKIPPED_WITH_URL = ("drain_by_worker_count", "history", "backlog", "peak_rss")
CANCEL_CONCURRENCY = 16
SAMPLE = 32  # tasks followed one by one for the drain's progress bar


def _at(task: Task, name: str) -> datetime:
    return parse_time(task[name], name)


async def submit(client: httpx.AsyncClient, tasks: list[dict[str, str]], batch_size: int,
                 on_batch: Callable[[float], None]) -> list[Task]:
    """POST /tasks in batches; the created tasks in order."""
    created: list[Task] = []
    for start in range(0, len(tasks), batch_size):
        body = json.dumps({"tasks": tasks[start : start + batch_size]})
        created += (await call(client, "POST", "/tasks", content=body))["tasks"]
        on_batch(len(created) / len(tasks))
    return created


async def wait_finished(client: httpx.AsyncClient, ids: set[str], since: datetime,
                        label: str, progress: Progress, *, timeout: float) -> None:
    """Poll until none of `ids` is unfinished. The progress bar follows a random sample
    of them one by one (cheap: at most SAMPLE small requests a second)."""
    sample = set(random.sample(sorted(ids), min(SAMPLE, len(ids))))
    pending = set(sample)
    next_sample = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while True:
                if pending and trio.current_time() >= next_sample:
                    next_sample = trio.current_time() + 1.0
                    for task_id in list(pending):
                        task = await call(client, "GET", f"/tasks/{task_id}")
                        if task["status"] not in ("scheduled", "picked", "running"):
                            pending.discard(task_id)
                progress.step(label, min(0.99, 1 - len(pending) / len(sample)))
                if not await any_unfinished(client, ids, since) and not await any_unfinished(
                    client, ids, since
                ):
                    progress.step(label, 1.0)
                    return
                await trio.sleep(0.1)
    except trio.TooSlowError:
        raise BenchError(f"{label}: the cluster did not finish the bench's tasks within "
                         f"{timeout:.0f} s (are its workers running?)") from None


async def bench_drain(client: httpx.AsyncClient, plan: BenchPlan, progress: Progress,
                      command: str, batch_tps: float) -> float:
    """`drain_tasks` tasks, all due at one moment a little ahead (time to submit them
    first), drained by the cluster's workers: tasks / (last finished - due)."""
    lead = min(120.0, max(2.0, 2 * plan.drain_tasks / max(batch_tps, 1.0) + 1))
    due = datetime.now(UTC) + timedelta(seconds=lead)
    due_text = format_time(due) or ""
    created = await submit(
        client, [{"command": command, "scheduled_at": due_text}] * plan.drain_tasks,
        min(plan.batch_size, 10_000), lambda done: progress.step("drain, submitting", done),
    )
    if datetime.now(UTC) > due:
        progress.done("note: submitting the drain's tasks took longer than planned; "
                      "the drain figure includes part of the submission")
    ids = {t["task_id"] for t in created}
    since = min(created_at(t) for t in created)
    await wait_finished(client, ids, since, "drain, the cluster's workers", progress,
                        timeout=600 + lead)
    tasks = await finished_tasks(client, ids, since)
    ends = [_at(t, "completed_at") if t["completed_at"] else _at(t, "failed_at") for t in tasks]
    if not ends:
        raise BenchError("drain: none of the bench's tasks is listed as finished")
    due_stored = _at(created[0], "scheduled_at")
    return len(ends) / max(1e-6, (max(ends) - due_stored).total_seconds())


async def bench_latency(client: httpx.AsyncClient, plan: BenchPlan, progress: Progress,
                        command: str) -> dict[str, float]:
    """`latency_rate` tasks/s, each due 1 s after it is sent, for `latency_seconds`;
    percentiles of the stored started_at - scheduled_at."""
    tick = 0.05
    per_tick = max(1, round(plan.latency_rate * tick))
    ticks = int(plan.latency_seconds / tick)
    created: list[Task] = []
    next_at = trio.current_time()
    for index in range(ticks):
        at = format_time(datetime.now(UTC) + timedelta(seconds=1)) or ""
        body = json.dumps({"tasks": [{"command": command, "scheduled_at": at}] * per_tick})
        created += (await call(client, "POST", "/tasks", content=body))["tasks"]
        progress.step("latency, steady stream", (index + 1) / ticks)
        next_at += tick
        await trio.sleep_until(next_at)
    ids = {t["task_id"] for t in created}
    since = min(created_at(t) for t in created)
    await wait_finished(client, ids, since, "latency, last tasks", progress, timeout=120)
    values = [
        (_at(t, "started_at") - _at(t, "scheduled_at")).total_seconds() * 1000
        for t in await finished_tasks(client, ids, since)
        if t["started_at"]
    ]
    result = percentiles(values)
    result["started_early"] = float(sum(1 for ms in values if ms < 0))
    return result


async def cancel_ingest(client: httpx.AsyncClient, target: Target, command: str,
                        since: datetime | None, progress: Progress) -> int:
    """Cancel the ingest phases' tasks (found by their command), CANCEL_CONCURRENCY at a
    time; a task someone else cancelled meanwhile (409) or that is gone (404) is fine."""
    label = "cancelling the ingest tasks"
    progress.step(label, 0.0)
    ids = [t["task_id"] for t in await find_tasks(
        client, "scheduled", since, lambda t: t["command"] == command)]
    chunk = 2000
    errors = 0
    for start in range(0, len(ids), chunk):
        requests = [target.request("POST", f"/tasks/{task_id}/cancel")
                    for task_id in ids[start : start + chunk]]
        result = await run_requests(target, requests, concurrency=CANCEL_CONCURRENCY,
                                    ok=frozenset({200, 404, 409}))
        errors += result.errors
        progress.step(label, min(1.0, (start + chunk) / len(ids)))
    if not ids:
        progress.step(label, 1.0)
    if errors:
        raise BenchError(f"{errors} of the ingest tasks could not be cancelled; they are "
                         f"due in 2999 with command {command!r}")
    return len(ids)


async def run_remote(url: str, token: str | None, plan: BenchPlan,
                     result: BenchResult) -> None:
    progress = Progress()
    marker = f": tm-bench {uuid.uuid4().hex[:8]}"
    target = Target.from_url(url, token)
    result.mode = "url"
    result.target = url
    result.skipped = dict.fromkeys(SKIPPED_WITH_URL, NOT_MEASURED_URL)
    async with open_client(url, token) as client:
        await call(client, "GET", "/healthz")
        workers = (await call(client, "GET", "/workers"))["workers"]
        result.cluster_workers = len(workers)
        # A lower bound of the ingest tasks' created_at, with room for the clocks of the
        # scheduler and the database to differ a little.
        now = await server_time(client)
        since = now - timedelta(minutes=5) if now else None
        ingest = f"{marker} ingest"
        try:
            result.ingest_single_rps, result.errors = await bench_ingest_single(
                target, plan, progress, command=ingest
            )
            result.ingest_batch_tps = await bench_ingest_batch(
                url, plan, progress, command=ingest, token=token
            )
            result.ingest_batch_concurrent_tps = await bench_ingest_batch(
                url, plan, progress, command=ingest, token=token, clients=plan.batch_clients
            )
            result.cancelled_after_ingest = await cancel_ingest(
                client, target, ingest, since, progress
            )
        except BaseException:
            print(f"\nnote: tasks of the ingest phases may be left scheduled for {FAR[:4]} "
                  f"with command {ingest!r}", file=sys.stderr)
            raise
        if not workers:
            reason = "not measured (GET /workers lists no worker)"
            result.skipped.update(drain=reason, latency=reason)
        else:
            result.drain_tps["cluster"] = await bench_drain(
                client, plan, progress, f"{marker} drain", result.ingest_batch_tps
            )
            result.latency_ms = await bench_latency(client, plan, progress, f"{marker} latency")
    progress.done("benchmark finished")
