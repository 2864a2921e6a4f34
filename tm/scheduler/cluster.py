"""Routes about the service itself: its workers, health, readiness and metrics.

    GET /workers    {"workers": [...]}: those heard from within `worker_timeout_s`
    GET /healthz    200 while the process serves (open without a token)
    GET /readyz     200 with the database's round trip; 503 if it does not answer in 2 s
    GET /metrics    Prometheus text (not in the OpenAPI document)
"""

from __future__ import annotations

import trio
from quart import Response
from quart_schema import document_response, hide

from tm import metrics
from tm.aio.pg import Database, DatabaseUnavailable
from tm.core.tasks import Status
from tm.db import tasks as db_tasks
from tm.db import workers as db_workers
from tm.scheduler import schemas as sc
from tm.scheduler.http import api_blueprint, error_response, errors, json_response, services
from tm.scheduler.render import worker_json

READY_TIMEOUT_S = 2

blueprint = api_blueprint("cluster", __name__)


@blueprint.get("/workers")
@document_response(sc.WorkerList, 200)
@errors()
async def workers() -> Response:
    rows = await db_workers.list_workers(services().db, services().settings.worker_timeout_s)
    return json_response({"workers": [worker_json(r) for r in rows]})


@blueprint.get("/metrics")
@hide
async def metrics_endpoint() -> Response:
    counts = {s.value: 0 for s in Status}
    counts.update(await db_tasks.count_by_status(services().db))
    for status, count in counts.items():
        metrics.TASKS.labels(status).set(count)
    body, content_type = metrics.render()
    return Response(body, 200, content_type=content_type)


@blueprint.get("/healthz")
@document_response(sc.Health, 200)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@blueprint.get("/readyz")
@document_response(sc.Ready, 200)
@document_response(sc.Error, 503)
async def readyz() -> Response:
    try:
        elapsed_ms = await _ping(services().db)
    except DatabaseUnavailable as exc:
        return error_response(503, f"database unavailable: {exc}")
    return json_response({"status": "ready", "database_ms": elapsed_ms})


async def _ping(db: Database) -> float:
    """Round trip to PostgreSQL in ms; DatabaseUnavailable if none within READY_TIMEOUT_S."""
    start = trio.current_time()
    with trio.move_on_after(READY_TIMEOUT_S) as scope:
        await db.ping()
    if scope.cancelled_caught:
        raise DatabaseUnavailable(f"no answer within {READY_TIMEOUT_S} s")
    return round((trio.current_time() - start) * 1000, 3)
