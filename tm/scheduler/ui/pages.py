"""The dashboard's pages and the fragments htmx polls, on the "ui" blueprint.

    GET  /                          303 to /ui
    GET  /ui                        overview: counts by status, charts, workers
    GET  /ui/tasks                  task list: status filter, id search, keyset paging
    GET  /ui/tasks/<id>             one task, with a cancel button while it can be cancelled
    POST /ui/tasks/<id>/cancel      (form, CSRF token) cancels it
    GET  /ui/schedules              recurring schedules
    GET  /ui/login, POST /ui/login, POST /ui/logout   only when TM_API_TOKEN is set
    GET  /ui/fragments/...          the live parts of those pages, polled by htmx
    GET  /ui/static/...             CSS and the vendored htmx (static/vendor/README.md)

Pages are complete without JavaScript (forms post and redirect); htmx only replaces
fragments every few seconds. Every request passes tm.scheduler.ui.sessions first (its
session, or the way to sign in) and gets its security headers there. UI routes are hidden
from the OpenAPI document.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog
from quart import Blueprint, Response, g, render_template, request, send_from_directory
from quart_schema import hide

from tm.core.tasks import InvalidInput, Status
from tm.core.timefmt import format_time
from tm.db import schedules as db_schedules
from tm.db import tasks as db_tasks
from tm.db import workers as db_workers
from tm.scheduler.http import services
from tm.scheduler.ui import sessions
from tm.scheduler.ui.charts import charts_context
from tm.scheduler.ui.sessions import is_htmx, see_other

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_SIZE = 50
SCHEDULE_PAGE = 200
CANCELLABLE = frozenset({Status.SCHEDULED, Status.PICKED, Status.RUNNING})

blueprint = Blueprint("ui", __name__, template_folder="templates")
blueprint.before_request(sessions.authenticate)
blueprint.after_request(sessions.finish)

View = Callable[..., Awaitable[Any]]


def route(rule: str, method: str = "GET") -> Callable[[View], View]:
    """A dashboard route: on the blueprint, hidden from the OpenAPI document."""

    def decorate(fn: View) -> View:
        blueprint.route(rule, methods=[method])(hide(fn))
        return fn

    return decorate


async def page(template: str, code: int = 200, **context: Any) -> Response:
    body = await render_template(
        template, csrf=g.get("csrf"), token_required=sessions.token_required(),
        signed_in=g.get("sid") is not None, **context)
    return Response(body, status=code, content_type="text/html; charset=utf-8")


# ---------------------------------------------------------------------------- formatting


@blueprint.app_template_filter("ts")
def ts(value: datetime | None) -> str:
    return format_time(value) or "—"


@blueprint.app_template_filter("ago")
def ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    seconds = (datetime.now(UTC) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "now"
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 36 * 3600:
        text = f"{seconds / 3600:.0f} h"
    else:
        text = f"{seconds / 86400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


# ---------------------------------------------------------------------------- sign-in


@route("/")
async def root() -> Response:
    return see_other("/ui")


@route("/ui/static/<path:filename>")
async def static(filename: str) -> Response:
    response = await send_from_directory(STATIC_DIR, filename)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@route("/ui/login")
async def login() -> Response:
    if not sessions.token_required():
        return see_other("/ui")
    return await page("login.html", next=sessions.safe_next(request.args.get("next")),
                      error=None)


@route("/ui/login", "POST")
async def login_submit() -> Response:
    if not sessions.token_required():
        return see_other("/ui")
    form = await request.form
    target = sessions.safe_next(form.get("next"))
    if not sessions.check_token(str(form.get("token", "")).strip()):
        log.warning("ui login failed", action="ui_login_failed", remote=request.remote_addr)
        return await page("login.html", code=401, next=target,
                          error="That token is not the scheduler's API token.")
    sessions.start_session()
    log.info("ui login", action="ui_login", remote=request.remote_addr)
    return see_other(target)


@route("/ui/logout", "POST")
async def logout() -> Response:
    rejected = sessions.check_csrf(await request.form)
    if rejected:
        return rejected
    return sessions.end_session(see_other("/ui/login" if sessions.token_required() else "/ui"))


# ---------------------------------------------------------------------------- overview


async def overview_context() -> dict[str, Any]:
    db, settings = services().db, services().settings
    counts = {s.value: 0 for s in Status}
    counts.update(await db_tasks.count_by_status(db))
    workers = await db_workers.list_workers(db, settings.worker_timeout_s)
    return {
        "counts": counts, "total": sum(counts.values()), "workers": workers,
        "free_slots": sum(w["free_slots"] for w in workers),
        "capacity": sum(w["capacity"] for w in workers),
        "now": datetime.now(UTC),
    }


@route("/ui")
async def overview() -> Response:
    return await page("overview.html", nav="overview", **await overview_context(),
                      **await charts_context(services().db))


@route("/ui/fragments/overview")
async def overview_fragment() -> Response:
    return await page("_overview.html", **await overview_context())


@route("/ui/fragments/charts")
async def charts_fragment() -> Response:
    return await page("_charts.html", **await charts_context(services().db))


# ---------------------------------------------------------------------------- tasks


def list_args() -> tuple[Status | None, str | None, str | None]:
    """(status, after, error) of a task list page; a bad status is shown, not raised."""
    raw = request.args.get("status") or None
    try:
        status = Status(raw) if raw else None
    except ValueError:
        return None, None, f"unknown status {raw!r}"
    return status, request.args.get("after") or None, None


async def tasks_context() -> dict[str, Any]:
    status, after, error = list_args()
    rows: list[Any] = []
    cursor = None
    if error is None:
        try:
            rows, cursor = await db_tasks.list_tasks(services().db, status=status,
                                                    limit=PAGE_SIZE, after=after)
        except InvalidInput as exc:
            error = str(exc)
    query = {"status": status.value if status else ""}
    return {
        "rows": rows, "status": status.value if status else "", "after": after,
        "next_url": "/ui/tasks?" + urlencode({**query, "after": cursor}) if cursor else None,
        "first_url": "/ui/tasks?" + urlencode(query) if after else None,
        "fragment_url": "/ui/fragments/tasks?" + urlencode(
            {**query, **({"after": after} if after else {})}),
        "error": error, "statuses": [s.value for s in Status],
    }


@route("/ui/tasks")
async def tasks() -> Response:
    q = request.args.get("q", "").strip()
    search_error = None
    if q:
        try:
            return see_other(f"/ui/tasks/{uuid.UUID(q)}")
        except ValueError:
            search_error = f"{q[:80]!r} is not a task id (a UUID such as 0b6f2c1e-…)"
    context = await tasks_context()
    return await page("tasks.html", code=400 if search_error or context["error"] else 200,
                      nav="tasks", q=q, search_error=search_error, **context)


@route("/ui/fragments/tasks")
async def tasks_fragment() -> Response:
    return await page("_tasks.html", **await tasks_context())


async def load_task(task_id: str) -> Any:
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        return None
    return await db_tasks.get_task(services().db, parsed)


def task_context(row: Any, message: str | None = None) -> dict[str, Any]:
    return {"task": row, "cancellable": Status(row["status"]) in CANCELLABLE,
            "finished": Status(row["status"]).terminal, "message": message}


async def not_found(what: str) -> Response:
    return await page("not_found.html", code=404, nav="tasks", what=what)


@route("/ui/tasks/<task_id>")
async def task(task_id: str) -> Response:
    row = await load_task(task_id)
    if row is None:
        return await not_found(f"No task with id {task_id[:80]!r}.")
    return await page("task.html", nav="tasks", **task_context(row))


@route("/ui/fragments/tasks/<task_id>")
async def task_fragment(task_id: str) -> Response:
    row = await load_task(task_id)
    if row is None:
        return Response("no such task", status=404)
    return await page("_task.html", **task_context(row))


@route("/ui/tasks/<task_id>/cancel", "POST")
async def cancel(task_id: str) -> Response:
    rejected = sessions.check_csrf(await request.form)
    if rejected:
        return rejected
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        return await not_found(f"No task with id {task_id[:80]!r}.")
    db = services().db
    outcome, row = await db_tasks.cancel_task(db, parsed)
    if outcome == "unknown":
        return await not_found(f"No task with id {parsed}.")
    if outcome == "finished":
        message = f"Not cancelled: the task had already finished as {row['status']}."
    else:
        message = "Cancelled."
        log.info("task cancelled from the dashboard", action="ui_task_cancelled",
                 task_id=str(parsed), worker_id=row["held_by"])
        row = await db_tasks.get_task(db, parsed)
    if is_htmx():
        return await page("_task.html", **task_context(row, message))
    return see_other(f"/ui/tasks/{parsed}")


# ---------------------------------------------------------------------------- schedules


async def schedules_context() -> dict[str, Any]:
    rows, cursor = await db_schedules.list_schedules(services().db, limit=SCHEDULE_PAGE,
                                                     after=None)
    return {"schedules": rows, "more": cursor is not None}


@route("/ui/schedules")
async def schedules() -> Response:
    return await page("schedules.html", nav="schedules", **await schedules_context())


@route("/ui/fragments/schedules")
async def schedules_fragment() -> Response:
    return await page("_schedules.html", **await schedules_context())
