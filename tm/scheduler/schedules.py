"""Routes of recurring schedules.

    POST   /schedules               201 the schedule; 409 if the name is taken
    GET    /schedules               {"schedules": [...], "next": cursor}, by name
    GET    /schedules/<name>
    PATCH  /schedules/<name>        any subset of the fields: edit, pause, resume
    DELETE /schedules/<name>        200 the deleted schedule; its tasks stay
    GET    /schedules/<name>/runs   the tasks it created, newest first, paged like /tasks

Errors are those of the task routes: 400 naming the field (a bad cron expression, an
unknown time zone, a malformed name), 404 for an unknown schedule, 409 for a taken name.
Validation is tm.core.schedules; the rows are tm.db.schedules.
"""

from __future__ import annotations

from typing import Any

import structlog
from quart import Response
from quart_schema import (
    document_querystring,
    document_request,
    document_response,
)

from tm.core.schedules import parse_new_schedule, parse_schedule_name
from tm.core.tasks import InvalidInput
from tm.db import schedules as db_schedules
from tm.db import tasks as db_tasks
from tm.scheduler import schemas as sc
from tm.scheduler.http import ApiError, api_blueprint, errors, json_response, read_json, services
from tm.scheduler.query import after_arg, limit_arg, status_arg
from tm.scheduler.render import run_json, schedule_json

log = structlog.get_logger(__name__)

blueprint = api_blueprint("schedules", __name__)


def _unknown(name: str) -> ApiError:
    return ApiError(404, f"no schedule named {name!r}")


def _found(row: Any, name: str) -> Response:
    """The schedule `row` as the answer; 404 if there was none named `name`."""
    if row is None:
        raise _unknown(name)
    return json_response(schedule_json(row))


@blueprint.post("/schedules")
@document_request(sc.ScheduleIn)
@document_response(sc.Schedule, 201)
@errors(400, 409, 413)
async def create_schedule() -> Response:
    spec = parse_new_schedule(await read_json())
    row = await db_schedules.create_schedule(services().db, spec)
    if row is None:
        raise ApiError(409, f"a schedule named {spec.name!r} already exists")
    log.info("schedule created", action="schedule_created", schedule=spec.name,
             cron=spec.cron, timezone=spec.timezone, paused=spec.paused)
    return json_response(schedule_json(row), 201)


@blueprint.get("/schedules")
@document_querystring(sc.ScheduleListQuery)
@document_response(sc.ScheduleList, 200)
@errors(400)
async def list_schedules() -> Response:
    limit, after = limit_arg(), after_arg()
    if after is not None:
        try:
            parse_schedule_name(after)
        except InvalidInput:
            raise ApiError(400, "after is not a cursor returned by this API (use 'next')"
                           ) from None
    rows, cursor = await db_schedules.list_schedules(services().db, limit=limit, after=after)
    return json_response({"schedules": [schedule_json(r) for r in rows], "next": cursor})


@blueprint.get("/schedules/<name>")
@document_response(sc.Schedule, 200)
@errors(400, 404)
async def get_schedule(name: str) -> Response:
    return _found(await db_schedules.get_schedule(services().db, parse_schedule_name(name)),
                  name)


@blueprint.patch("/schedules/<name>")
@document_request(sc.SchedulePatch)
@document_response(sc.Schedule, 200)
@errors(400, 404, 413)
async def patch_schedule(name: str) -> Response:
    # The body first: answering before it is read would leave it on a kept-alive
    # connection, to be taken for the start of the next request.
    body = await read_json()
    parse_schedule_name(name)
    row = await db_schedules.update_schedule(services().db, name, body)
    if row is None:
        raise _unknown(name)
    log.info("schedule changed", action="schedule_changed", schedule=name,
             fields=sorted(body) if isinstance(body, dict) else None, paused=row["paused"])
    return json_response(schedule_json(row))


@blueprint.delete("/schedules/<name>")
@document_response(sc.Schedule, 200)
@errors(400, 404)
async def delete_schedule(name: str) -> Response:
    row = await db_schedules.delete_schedule(services().db, parse_schedule_name(name))
    if row is not None:
        log.info("schedule deleted", action="schedule_deleted", schedule=name)
    return _found(row, name)


@blueprint.get("/schedules/<name>/runs")
@document_querystring(sc.ListQuery)
@document_response(sc.RunPage, 200)
@errors(400, 404)
async def list_runs(name: str) -> Response:
    parse_schedule_name(name)
    status, limit, after = status_arg(), limit_arg(), after_arg()
    db = services().db
    if await db_schedules.get_schedule(db, name) is None:
        raise _unknown(name)
    rows, cursor = await db_tasks.list_tasks(
        db, status=status, limit=limit, after=after, schedule=name
    )
    return json_response({"tasks": [run_json(r) for r in rows], "next": cursor})
