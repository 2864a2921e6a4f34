"""The HTTP API of the contract (DESIGN.md "HTTP API").

Rules kept here:
* Request bodies are read as JSON whatever the Content-Type says (`curl -d` sends a form
  content type and must work).
* Every answer is JSON. Client mistakes are 4xx with `{"error": "..."}` naming the problem;
  an unreachable database is 503; an unexpected failure is a logged 500 with no details.
* A request that fails validation touches no stored task (batches are all-or-nothing).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import structlog
import trio
from quart import Response, request
from quart_schema import (
    QuartSchema,
    document_headers,
    document_querystring,
    document_request,
    document_response,
    hide,
)
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tm import __version__, metrics
from tm.aio.pg import Database, DatabaseUnavailable
from tm.core.tasks import (
    MAX_BATCH,
    InvalidInput,
    NewTask,
    Status,
    parse_new_task,
    parse_new_tasks,
    parse_task_id,
)
from tm.db import queries
from tm.ids import new_id, new_ids
from tm.scheduler import schemas as sc
from tm.scheduler.ingest import GroupCommit
from tm.scheduler.render import inserted_json, task_json, tasks_json, worker_json
from tm.settings import SchedulerSettings

log = structlog.get_logger("tm.scheduler")

F = TypeVar("F", bound=Callable[..., Any])

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_PAGE = 1000
DEFAULT_PAGE = 100
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs"})


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def prefers_minimal(prefer: list[str]) -> bool:
    """Whether the `Prefer` header(s) ask for `return=minimal` (RFC 7240: comma-separated
    preferences, each possibly with `;` parameters; names are case-insensitive)."""
    for value in prefer:
        for preference in value.split(","):
            name, _, token = preference.split(";", 1)[0].partition("=")
            if name.strip().lower() == "return" and token.strip().strip('"') == "minimal":
                return True
    return False


def minimal_response(body: Any, status: int) -> Response:
    response = json_response(body, status)
    response.headers["Preference-Applied"] = "return=minimal"
    return response


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json() -> Any:
    """The request body parsed as JSON, whatever the Content-Type. 400 when it is not."""
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    assert isinstance(raw, bytes)
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The standard library's parser says what is wrong, and takes the few documents
        # orjson refuses that the contract answers field by field (a lone surrogate in a
        # string, a number beyond a double): those get a 400 naming the field.
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def _new_task(body: object) -> NewTask:
    try:
        return parse_new_task(body, new_id())
    except InvalidInput as exc:
        raise ApiError(400, str(exc)) from None


# A batch is checked this many tasks at a time, with a checkpoint between slices: 10,000
# tasks are ~25 ms of CPU, during which the process's other requests (and the database
# I/O of the batch before, in group commit) would otherwise wait.
PARSE_SLICE = 1000


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


def errors(*codes: int) -> Callable[[F], F]:
    """Document the error answers of a route: its own, plus 401 and 503 every route can give."""

    def decorate(fn: F) -> F:
        for code in sorted({*codes, 401, 503}):
            fn = document_response(sc.Error, code)(fn)
        return fn

    return decorate


def create_app(settings: SchedulerSettings, db: Database, ingest: GroupCommit) -> QuartTrio:
    """The API over `db`; single-task inserts go through `ingest` (group commit)."""
    # No app-wide /static: the dashboard serves its own files under /ui/static (tm.scheduler.ui).
    app = QuartTrio("tm.scheduler", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # OPTIONS would answer an empty text/html body; without it, a JSON 405 says what's allowed.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    QuartSchema(
        app,
        info={"title": "TaskMaster", "version": __version__,
              "description": "Schedule commands to run at a time; see the README."},
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}}
        if settings.api_token else None,
        security=[{"bearer": []}] if settings.api_token else None,
        openapi_provider_class=sc.OpenAPI,
    )

    @app.before_request
    async def check_token() -> Response | None:
        if settings.api_token is None or request.path in OPEN_PATHS:
            return None
        if request.blueprint == "ui":
            return None  # the dashboard checks its own session cookie (tm.scheduler.ui)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.api_token.encode()
        ):
            response = error_response(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="taskmaster"'
            return response
        return None

    @app.after_request
    async def count_request(response: Response) -> Response:
        metrics.HTTP_REQUESTS.labels(request.method, str(response.status_code)).inc()
        if request.content_length and not _body_received():
            # Answered before its body arrived (401, a bad id, 413, ...): the rest would be
            # taken for the next request on a kept-alive connection. Close it instead.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(ApiError)
    async def on_api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message)

    @app.errorhandler(InvalidInput)
    async def on_invalid(exc: InvalidInput) -> Response:
        return error_response(400, str(exc))

    @app.errorhandler(DatabaseUnavailable)
    async def on_db_down(exc: DatabaseUnavailable) -> Response:
        log.warning("database unavailable", action="db_unavailable", error=str(exc))
        response = error_response(503, "database unavailable; try again shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: f"no such route: {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: f"request body is larger than {MAX_BODY_BYTES} bytes",
        }
        response = error_response(status, messages.get(status, exc.description or exc.name))
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", action="http_500", path=request.path)
        return error_response(500, "internal error")

    async def store_one(body: object) -> tuple[dict[str, Any], bool]:
        task = _new_task(body)
        [result] = await ingest.insert([task])
        if result.created:
            metrics.TASKS_CREATED.inc()
            log.info("task scheduled", action="task_created", task_id=str(task.task_id))
        return task_json(result.row), result.created

    # ------------------------------------------------------------ seed-compatible routes

    @app.post("/schedule")
    @document_request(sc.TaskIn)
    @document_response(sc.Task, 200)
    @errors(400, 413)
    async def schedule() -> Response:
        task, _ = await store_one(await read_json())
        return json_response(task, 200)

    @app.get("/status")
    @app.get("/status/")
    @document_querystring(sc.StatusQuery)
    @document_response(sc.Task, 200)
    @errors(400, 404)
    async def status() -> Response:
        task_id = parse_task_id(request.args.get("task_id"))
        row = await queries.get_task(db, task_id)
        if row is None:
            raise ApiError(404, f"no task with id {task_id}")
        return json_response(task_json(row))

    # ------------------------------------------------------------ REST routes

    @app.post("/tasks")
    @document_request(sc.CreateTasks)
    @document_headers(sc.PreferHeader)
    @document_response(sc.Existing, 200)
    @document_response(sc.Created, 201)
    @errors(400, 413)
    async def create_tasks() -> Response:
        minimal = prefers_minimal(request.headers.getlist("Prefer"))
        body = await read_json()
        if isinstance(body, dict) and "tasks" in body:
            items = body["tasks"]
            if set(body) != {"tasks"}:
                raise ApiError(400, 'a batch must be {"tasks": [...]} with no other fields')
            if not isinstance(items, list):
                raise ApiError(400, "tasks must be a list of task objects")
            if not items:
                raise ApiError(400, "tasks must not be empty")
            if len(items) > MAX_BATCH:
                raise ApiError(400, f"a batch holds at most {MAX_BATCH} tasks, got {len(items)}")
            tasks = await _new_tasks(items)
            results = await ingest.insert(tasks)
            created = sum(r.created for r in results)
            metrics.TASKS_CREATED.inc(created)
            log.info("batch scheduled", action="batch_created", count=len(tasks), created=created)
            if minimal:
                return minimal_response({"task_ids": [str(r.task_id) for r in results]}, 201)
            return json_response({"tasks": inserted_json(results)}, 201)
        task, created = await store_one(body)
        if minimal:
            return minimal_response({"task_id": task["task_id"]}, 201 if created else 200)
        return json_response(task, 201 if created else 200)

    @app.get("/tasks/<task_id>")
    @document_response(sc.Task, 200)
    @errors(400, 404)
    async def get_task(task_id: str) -> Response:
        parsed = parse_task_id(task_id)
        row = await queries.get_task(db, parsed)
        if row is None:
            raise ApiError(404, f"no task with id {parsed}")
        return json_response(task_json(row))

    @app.get("/tasks")
    @document_querystring(sc.ListQuery)
    @document_response(sc.TaskPage, 200)
    @errors(400)
    async def list_tasks() -> Response:
        raw_status = request.args.get("status")
        status_filter: Status | None = None
        if raw_status:
            try:
                status_filter = Status(raw_status)
            except ValueError:
                allowed = ", ".join(s.value for s in Status)
                raise ApiError(400, f"status must be one of: {allowed}") from None
        raw_limit = request.args.get("limit", str(DEFAULT_PAGE))
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 7):
            raise ApiError(400, "limit must be an integer")
        limit = int(raw_limit)
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}")
        after = request.args.get("after") or None
        rows, cursor = await queries.list_tasks(db, status=status_filter, limit=limit, after=after)
        return json_response({"tasks": tasks_json(rows), "next": cursor})

    @app.post("/tasks/<task_id>/cancel")
    @document_response(sc.Task, 200)
    @errors(400, 404, 409)
    async def cancel(task_id: str) -> Response:
        parsed = parse_task_id(task_id)
        outcome, row = await queries.cancel_task(db, parsed)
        if outcome == "unknown":
            raise ApiError(404, f"no task with id {parsed}")
        if outcome == "finished":
            raise ApiError(409, f"task {parsed} already finished as {row['status']}")
        log.info(
            "task cancelled",
            action="task_cancelled",
            task_id=str(parsed),
            worker_id=row["held_by"],
        )
        return json_response(task_json(row))

    @app.get("/workers")
    @document_response(sc.WorkerList, 200)
    @errors()
    async def workers() -> Response:
        rows = await queries.list_workers(db, settings.worker_timeout_s)
        return json_response({"workers": [worker_json(r) for r in rows]})

    # ------------------------------------------------------------ recurring schedules

    from tm.scheduler.schedules import register_schedule_routes  # imports this module

    register_schedule_routes(app, db)

    from tm.scheduler.ui import register_ui

    register_ui(app, db, settings)

    # ------------------------------------------------------------ health

    @app.get("/metrics")
    @hide
    async def metrics_endpoint() -> Response:
        counts = {s.value: 0 for s in Status}
        counts.update(await queries.count_by_status(db))
        for status, count in counts.items():
            metrics.TASKS.labels(status).set(count)
        body, content_type = metrics.render()
        return Response(body, 200, content_type=content_type)

    @app.get("/healthz")
    @document_response(sc.Health, 200)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    @document_response(sc.Ready, 200)
    @document_response(sc.Error, 503)
    async def readyz() -> Response:
        try:
            elapsed_ms = await _ping(db)
        except DatabaseUnavailable as exc:
            return error_response(503, f"database unavailable: {exc}")
        return json_response({"status": "ready", "database_ms": elapsed_ms})

    return app


def _body_received() -> bool:
    """Whether the whole request body has arrived (quart's Body, pinned: private event)."""
    complete = getattr(request.body, "_complete", None)
    return bool(complete is not None and complete.is_set())


async def _ping(db: Database) -> float:
    """Round trip to PostgreSQL in ms; DatabaseUnavailable if none within 2 s."""
    start = trio.current_time()
    with trio.move_on_after(2) as scope:
        await db.ping()
    if scope.cancelled_caught:
        raise DatabaseUnavailable("no answer within 2 s")
    return round((trio.current_time() - start) * 1000, 3)
