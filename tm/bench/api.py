"""Benchmark steps that use only the HTTP API: the two ingest phases (both modes) and the
helpers the `--url` mode needs to find and follow its own tasks among a cluster's others.

Every API error becomes a BenchError with a one-line message (no traceback for a refused
token or an unreachable scheduler).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tm.bench.load import Target, run_load, run_requests
from tm.bench.model import BenchPlan, Progress
from tm.core.timefmt import parse_time

Task = dict[str, Any]

FAR = "2999-01-01T00:00:00Z"
PAGE = 1000  # the API's largest `limit`
UNFINISHED = ("scheduled", "picked", "running")


class BenchError(Exception):
    """The bench cannot go on; the message (one line) says why, for a person."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def open_client(url: str, token: str | None = None, *, timeout: float = 30) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)


async def call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """The decoded JSON answer of a 2xx; a BenchError for anything else."""
    where = f"{client.base_url}".rstrip("/")
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise BenchError(f"cannot reach {where}: {one_line(exc) or type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error")
        except (ValueError, AttributeError):
            message = None
        message = message or response.text[:200] or "(no message)"
        hint = " (give the API's token with --api-token or TM_API_TOKEN)" \
            if response.status_code == 401 else ""
        raise BenchError(
            f"{method} {where}{path} answered {response.status_code}: {one_line(message)}{hint}"
        )
    try:
        return response.json()
    except ValueError:
        raise BenchError(
            f"{where}{path} did not answer JSON; is it a TaskMaster scheduler?"
        ) from None


def created_at(task: Task) -> datetime:
    return parse_time(task["created_at"], "created_at")


async def server_time(client: httpx.AsyncClient) -> datetime | None:
    """The scheduler's clock (its Date header, whole seconds), if it says."""
    try:
        response = await client.get("/healthz")
        return parsedate_to_datetime(response.headers["date"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- ingest


async def bench_ingest_single(
    target: Target, plan: BenchPlan, progress: Progress, *, command: str = "bench"
) -> tuple[float, int]:
    """POST /tasks, one task per request, from `ingest_concurrency` keep-alive connections."""
    body = json.dumps({"command": command, "scheduled_at": FAR}).encode()
    request = target.request("POST", "/tasks", body)
    progress.step("single-task ingest", 0.0)
    result = await run_load(target, request, concurrency=plan.ingest_concurrency,
                            seconds=plan.ingest_seconds, expect=201)
    progress.step("single-task ingest", 1.0)
    return result.per_second, result.errors


async def bench_ingest_batch(
    url: str, plan: BenchPlan, progress: Progress, *, command: str = "bench",
    token: str | None = None, clients: int = 1,
) -> float:
    """POST /tasks with `batch_size` tasks per request, `batches` requests in all, shared by
    `clients` clients at once (each waits for its answer before sending the next).

    The lean client (tm.bench.load) reads each answer without decoding it: httpx and a
    JSON decode of the 10,000 tasks answered cost ~40 ms of CPU per request, on the cores
    the cluster under test shares.
    """
    body = json.dumps({"tasks": [{"command": command, "scheduled_at": FAR}] * plan.batch_size})
    target = Target.from_url(url, token)
    total = max(plan.batches, clients)
    label = f"batch ingest, {clients} client{'s' if clients > 1 else ''}"
    progress.step(label, 0.0)
    result = await run_requests(
        target, [target.request("POST", "/tasks", body.encode())] * total,
        concurrency=clients, ok=frozenset({201}),
        on_answer=lambda done: progress.step(label, done / total),
    )
    if result.errors:
        # Ask once more with a client that reads the answer, for the error to show.
        async with open_client(url, token, timeout=120) as client:
            await call(client, "POST", "/tasks", content=body)
        raise BenchError(f"{label}: {result.errors} of {total} requests were refused")
    return plan.batch_size * total / result.elapsed_s


# ---------------------------------------------------------------------------- finding tasks


async def find_tasks(
    client: httpx.AsyncClient,
    status: str,
    since: datetime | None,
    wanted: Callable[[Task], bool],
    *,
    first: bool = False,
) -> list[Task]:
    """Tasks of `status` created at or after `since` for which `wanted(task)` holds.

    Reads GET /tasks pages newest first and stops at the first task created before
    `since`, so the cost depends on the tasks created since then, not on the table. With
    `first`, stops at the first match; its first page then asks for one task only (the
    common case: the newest task tells it all).
    """
    found: list[Task] = []
    params: dict[str, str | int] = {"status": status, "limit": 1 if first else PAGE}
    while True:
        page = await call(client, "GET", "/tasks", params=params)
        for task in page["tasks"]:
            if since is not None and created_at(task) < since:
                return found
            if wanted(task):
                found.append(task)
                if first:
                    return found
        if not page["next"]:
            return found
        params = {"status": status, "limit": PAGE, "after": page["next"]}


async def any_unfinished(client: httpx.AsyncClient, ids: Collection[str],
                         since: datetime) -> bool:
    """Whether one of `ids` (created at or after `since`) is scheduled, picked or running.

    The statuses are read in the order tasks move through them, so a task that moves on
    while they are read is still seen in the later one. (A task moved back — a retry, a
    lost worker — can be missed once; callers confirm a "no" with a second look.)
    """
    for status in UNFINISHED:
        if await find_tasks(client, status, since, lambda t: t["task_id"] in ids, first=True):
            return True
    return False


async def finished_tasks(client: httpx.AsyncClient, ids: Collection[str],
                         since: datetime) -> list[Task]:
    """Those of `ids` that completed or failed (created at or after `since`)."""
    found: list[Task] = []
    for status in ("completed", "failed"):
        found += await find_tasks(client, status, since, lambda t: t["task_id"] in ids)
    return found
