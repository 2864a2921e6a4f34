"""Task routes (DESIGN.md "HTTP API"): the seed-compatible pair and the REST routes.

    POST /schedule                  200 the task (seed-compatible)
    GET  /status?task_id=<uuid>     the task (also /status/)
    POST /tasks                     201 one task, or {"tasks": [...]} all or nothing;
                                    200 a known idempotency_key's task
    GET  /tasks/<uuid>              400 malformed id, 404 unknown
    GET  /tasks?status&limit&after  {"tasks": [...], "next": cursor}, newest first
    POST /tasks/<uuid>/cancel       200 the task; 409 if it had already finished

Validation is tm.core.tasks; every insert goes through group commit (tm.scheduler.ingest),
and a request is answered only once its rows are committed. A batch is checked whole before
anything is stored.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio
from quart import Response, request
from quart_schema import (
    document_headers,
    document_querystring,
    document_request,
    document_response,
)

from tm import metrics
from tm.core.tasks import (
    MAX_BATCH,
    InvalidInput,
    NewTask,
    parse_new_task,
    parse_new_tasks,
    parse_task_id,
)
from tm.db import tasks as db_tasks
from tm.ids import new_id, new_ids
from tm.scheduler import schemas as sc
from tm.scheduler.http import (
    ApiError,
    api_blueprint,
    errors,
    json_response,
    minimal_response,
    prefers_minimal,
    read_json,
    services,
)
from tm.scheduler.query import after_arg, limit_arg, status_arg
from tm.scheduler.render import inserted_json, task_json, tasks_json

log = structlog.get_logger(__name__)

blueprint = api_blueprint("tasks", __name__)

# A batch is checked this many tasks at a time, with a checkpoint between slices: 10,000
# tasks are ~25 ms of CPU, during which the process's other requests (and the database
# I/O of the batch before, in group commit) would otherwise wait.
PARSE_SLICE = 1000


def _new_task(body: object) -> NewTask:
    try:
        return parse_new_task(body, new_id())
    except InvalidInput as exc:
        raise ApiError(400, str(exc)) from None


async def _new_tasks(bodies: list[object]) -> list[NewTask]:
    ids = new_ids(len(bodies))
    tasks: list[NewTask] = []
    for start in range(0, len(bodies), PARSE_SLICE):
        if start:
            await trio.lowlevel.checkpoint()
        end = start + PARSE_SLICE
        try:
            tasks += parse_new_tasks(bodies[start:end], ids[start:end], first_index=start)
        except InvalidInput as exc:
            raise ApiError(400, str(exc)) from None
    return tasks


async def _store_one(body: object) -> tuple[dict[str, Any], bool]:
    """The task of `body`, stored (or the existing one of its idempotency key); and whether
    it is new."""
    task = _new_task(body)
    [result] = await services().ingest.insert([task])
    if result.created:
        metrics.TASKS_CREATED.inc()
        log.info("task scheduled", action="task_created", task_id=str(task.task_id))
    return task_json(result.row), result.created


def _batch_items(body: dict[str, Any]) -> list[object]:
    items = body["tasks"]
    if set(body) != {"tasks"}:
        raise ApiError(400, 'a batch must be {"tasks": [...]} with no other fields')
    if not isinstance(items, list):
        raise ApiError(400, "tasks must be a list of task objects")
    if not items:
        raise ApiError(400, "tasks must not be empty")
    if len(items) > MAX_BATCH:
        raise ApiError(400, f"a batch holds at most {MAX_BATCH} tasks, got {len(items)}")
    return items


async def _task_or_404(task_id: str | None) -> Response:
    parsed = parse_task_id(task_id)
    row = await db_tasks.get_task(services().db, parsed)
    if row is None:
        raise ApiError(404, f"no task with id {parsed}")
    return json_response(task_json(row))


# ---------------------------------------------------------------- seed-compatible routes


@blueprint.post("/schedule")
@document_request(sc.TaskIn)
@document_response(sc.Task, 200)
@errors(400, 413)
async def schedule() -> Response:
    task, _ = await _store_one(await read_json())
    return json_response(task, 200)


@blueprint.get("/status")
@blueprint.get("/status/")
@document_querystring(sc.StatusQuery)
@document_response(sc.Task, 200)
@errors(400, 404)
async def status() -> Response:
    return await _task_or_404(request.args.get("task_id"))


# ---------------------------------------------------------------- REST routes


@blueprint.post("/tasks")
@document_request(sc.CreateTasks)
@document_headers(sc.PreferHeader)
@document_response(sc.Existing, 200)
@document_response(sc.Created, 201)
@errors(400, 413)
async def create_tasks() -> Response:
    minimal = prefers_minimal(request.headers.getlist("Prefer"))
    body = await read_json()
    if isinstance(body, dict) and "tasks" in body:
        tasks = await _new_tasks(_batch_items(body))
        results = await services().ingest.insert(tasks)
        created = sum(r.created for r in results)
        metrics.TASKS_CREATED.inc(created)
        log.info("batch scheduled", action="batch_created", count=len(tasks), created=created)
        if minimal:
            return minimal_response({"task_ids": [str(r.task_id) for r in results]}, 201)
        return json_response({"tasks": inserted_json(results)}, 201)
    task, created = await _store_one(body)
    if minimal:
        return minimal_response({"task_id": task["task_id"]}, 201 if created else 200)
    return json_response(task, 201 if created else 200)


@blueprint.get("/tasks/<task_id>")
@document_response(sc.Task, 200)
@errors(400, 404)
async def get_task(task_id: str) -> Response:
    return await _task_or_404(task_id)


@blueprint.get("/tasks")
@document_querystring(sc.ListQuery)
@document_response(sc.TaskPage, 200)
@errors(400)
async def list_tasks() -> Response:
    status_filter, limit, after = status_arg(), limit_arg(), after_arg()
    rows, cursor = await db_tasks.list_tasks(
        services().db, status=status_filter, limit=limit, after=after
    )
    return json_response({"tasks": tasks_json(rows), "next": cursor})


@blueprint.post("/tasks/<task_id>/cancel")
@document_response(sc.Task, 200)
@errors(400, 404, 409)
async def cancel(task_id: str) -> Response:
    parsed = parse_task_id(task_id)
    outcome, row = await db_tasks.cancel_task(services().db, parsed)
    if outcome == "unknown":
        raise ApiError(404, f"no task with id {parsed}")
    if outcome == "finished":
        raise ApiError(409, f"task {parsed} already finished as {row['status']}")
    log.info("task cancelled", action="task_cancelled", task_id=str(parsed),
             worker_id=row["held_by"])
    return json_response(task_json(row))
