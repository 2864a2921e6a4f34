"""The web dashboard: server-rendered pages under /ui (registered by create_app).

    GET  /                          303 to /ui
    GET  /ui                        overview: counts by status, charts, workers
    GET  /ui/tasks                  task list: status filter, id search, keyset paging
    GET  /ui/tasks/<id>             one task, with a cancel button while it can be cancelled
    POST /ui/tasks/<id>/cancel      (form, CSRF token) cancels it
    GET  /ui/schedules              recurring schedules
    GET  /ui/login, POST /ui/login, POST /ui/logout   only when TM_API_TOKEN is set
    GET  /ui/fragments/...          the live parts of those pages, polled by htmx
    GET  /ui/static/...             CSS and the vendored htmx (static/vendor/README.md)

Rules kept here:
* The API token never travels in a URL and is never logged. With a token configured,
  POST /ui/login checks it once and answers with a session cookie: `<sid>.<expiry>.<mac>`,
  the MAC an HMAC under a key derived from the token (so any scheduler replica with the
  same token accepts it, and changing the token ends every session). The cookie is
  HttpOnly, SameSite=Strict, Path=/ui. The cookie is accepted on /ui routes only (the app's
  bearer check skips the "ui" blueprint, whose own check is `_authenticate`); the JSON API
  keeps requiring the bearer header.
* Every state change (cancel, logout) is a POST carrying a CSRF token derived from the
  session id (HMAC), checked in constant time. Without a token configured the dashboard is
  open like the API, but still hands out an anonymous session so that cancel is
  CSRF-protected too.
* Pages are complete without JavaScript (forms post and redirect); htmx only replaces
  fragments every few seconds. The Content-Security-Policy allows scripts and styles from
  this origin only: no CDN, nothing inline.
* UI routes are hidden from the OpenAPI document.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog
from quart import Blueprint, Response, g, render_template, request, send_from_directory
from quart_schema import hide
from quart_trio import QuartTrio

from tm.aio.pg import Database
from tm.core.tasks import InvalidInput, Status
from tm.core.timefmt import format_time
from tm.db import queries, ui_queries
from tm.db import schedules as db_schedules
from tm.settings import SchedulerSettings

log = structlog.get_logger("tm.scheduler.ui")

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
COOKIE = "tm_ui_session"
SESSION_TTL_S = 8 * 3600
CHART_MINUTES = 15
PAGE_SIZE = 50
SCHEDULE_PAGE = 200
CANCELLABLE = frozenset({Status.SCHEDULED, Status.PICKED, Status.RUNNING})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

# ---------------------------------------------------------------------------- sessions


def session_key(api_token: str | None) -> bytes:
    """The HMAC key of session cookies and CSRF tokens; derived from the token, if any."""
    if api_token is None:
        # Open dashboard: the cookie proves nothing; it only anchors the CSRF token.
        return b"tm-ui-open-v1"
    return hashlib.sha256(b"tm-ui-session-v1\0" + api_token.encode()).digest()


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def mint_session(key: bytes, now: float) -> tuple[str, str]:
    """A new (session id, cookie value) valid for SESSION_TTL_S from `now`."""
    sid = secrets.token_urlsafe(24)
    expiry = int(now) + SESSION_TTL_S
    return sid, f"{sid}.{expiry}.{_mac(key, f'{sid}.{expiry}')}"


def verify_session(key: bytes, cookie: str, now: float) -> str | None:
    """The session id of a cookie minted under `key` that has not expired, else None."""
    parts = cookie.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None
    sid, expiry, mac = parts
    if not hmac.compare_digest(mac.encode(), _mac(key, f"{sid}.{expiry}").encode()):
        return None
    if int(expiry) <= now:
        return None
    return sid


def csrf_token(key: bytes, sid: str) -> str:
    return _mac(key, f"csrf:{sid}")


def see_other(location: str) -> Response:
    """303 to a local path: after a form post, the browser GETs the page."""
    return Response("", status=303, headers={"Location": location})


def _safe_next(target: str | None) -> str:
    """A local /ui path to go to after login; anything else becomes /ui."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


# ---------------------------------------------------------------------------- formatting


def _ts(value: datetime | None) -> str:
    return format_time(value) or "—"


def _ago(value: datetime | None) -> str:
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


def _hhmm(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M")


def chart(series: list[ui_queries.MinuteCount], *, width: int = 300, height: int = 80
          ) -> dict[str, Any]:
    """Bar geometry for an inline SVG chart (templates/_chart.html): one bar per minute,
    `failed` stacked on top of `count`."""
    top = max([s.count + s.failed for s in series] + [1])
    plot = height
    step = width / max(len(series), 1)
    bars = []
    for i, s in enumerate(series):
        h_ok = plot * s.count / top
        h_bad = plot * s.failed / top
        bars.append({
            "x": round(i * step + 1, 2), "w": round(max(step - 2, 1), 2),
            "y_ok": round(plot - h_ok, 2), "h_ok": round(h_ok, 2),
            "y_bad": round(plot - h_ok - h_bad, 2), "h_bad": round(h_bad, 2),
            "label": _hhmm(s.minute), "count": s.count, "failed": s.failed,
        })
    return {
        "bars": bars, "width": width, "height": height, "plot": plot, "top": top,
        "total": sum(s.count for s in series), "total_failed": sum(s.failed for s in series),
        "last": series[-1].count if series else 0,
        "peak": max([s.count + s.failed for s in series] + [0]),
        "first_label": _hhmm(series[0].minute) if series else "",
        "last_label": _hhmm(series[-1].minute) if series else "",
    }


# ---------------------------------------------------------------------------- routes


def register_ui(app: QuartTrio, db: Database, settings: SchedulerSettings) -> None:
    """Add the dashboard to `app`. Its requests have `request.blueprint == "ui"`."""
    bp = Blueprint("ui", __name__, template_folder="templates")
    key = session_key(settings.api_token)
    token_required = settings.api_token is not None

    def ui_route(rule: str, **options: Any) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
            return bp.route(rule, **options)(hide(fn))

        return decorate

    def is_htmx() -> bool:
        return request.headers.get("HX-Request") == "true"

    async def page(template: str, code: int = 200, **context: Any) -> Response:
        body = await render_template(
            template, csrf=g.get("csrf"), token_required=token_required,
            signed_in=g.get("sid") is not None, **context)
        return Response(body, status=code, content_type="text/html; charset=utf-8")

    @bp.app_template_filter("ts")
    def ts_filter(value: datetime | None) -> str:
        return _ts(value)

    @bp.app_template_filter("ago")
    def ago_filter(value: datetime | None) -> str:
        return _ago(value)

    @bp.before_request
    async def _authenticate() -> Response | None:
        if request.endpoint in ("ui.root", "ui.static", "ui.login", "ui.login_submit"):
            return None
        cookie = request.cookies.get(COOKIE, "")
        sid = verify_session(key, cookie, time.time()) if cookie else None
        if sid is None:
            if token_required:
                here = request.path
                if request.query_string:
                    here += "?" + request.query_string.decode("ascii", "replace")
                target = "/ui/login?" + urlencode({"next": _safe_next(here)})
                if is_htmx():
                    # A poll after the session expired: send the whole page to the login form.
                    response = Response("", status=401)
                    response.headers["HX-Redirect"] = target
                    return response
                return see_other(target)
            sid, cookie = mint_session(key, time.time())
            g.new_cookie = cookie
        g.sid = sid
        g.csrf = csrf_token(key, sid)
        return None

    @bp.after_request
    async def _headers(response: Response) -> Response:
        new_cookie = g.get("new_cookie")
        if new_cookie:
            response.set_cookie(COOKIE, new_cookie, max_age=SESSION_TTL_S, path="/ui",
                                httponly=True, samesite="Strict", secure=request.is_secure)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "ui.static":
            response.headers["Cache-Control"] = "no-store"
        return response

    def check_csrf(form: Any) -> Response | None:
        given = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(given.encode(), g.csrf.encode()):
            log.warning("ui csrf rejected", action="ui_csrf_rejected", path=request.path)
            return Response("CSRF token missing or wrong; reload the page.", status=403,
                            content_type="text/plain; charset=utf-8")
        return None

    # ------------------------------------------------------------------ login

    @ui_route("/", methods=["GET"])
    async def root() -> Response:
        return see_other("/ui")

    @ui_route("/ui/static/<path:filename>", methods=["GET"])
    async def static(filename: str) -> Response:
        response = await send_from_directory(STATIC_DIR, filename)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    @ui_route("/ui/login", methods=["GET"])
    async def login() -> Response:
        if not token_required:
            return see_other("/ui")
        return await page("login.html", next=_safe_next(request.args.get("next")), error=None)

    @ui_route("/ui/login", methods=["POST"])
    async def login_submit() -> Response:
        if not token_required:
            return see_other("/ui")
        assert settings.api_token is not None
        form = await request.form
        target = _safe_next(form.get("next"))
        given = str(form.get("token", "")).strip()
        if not hmac.compare_digest(given.encode(), settings.api_token.encode()):
            log.warning("ui login failed", action="ui_login_failed",
                        remote=request.remote_addr)
            return await page("login.html", code=401, next=target,
                              error="That token is not the scheduler's API token.")
        _, cookie = mint_session(key, time.time())
        log.info("ui login", action="ui_login", remote=request.remote_addr)
        response = see_other(target)
        g.new_cookie = cookie
        return response

    @ui_route("/ui/logout", methods=["POST"])
    async def logout() -> Response:
        rejected = check_csrf(await request.form)
        if rejected:
            return rejected
        response = see_other("/ui/login" if token_required else "/ui")
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # ------------------------------------------------------------------ overview

    async def overview_context() -> dict[str, Any]:
        counts = {s.value: 0 for s in Status}
        counts.update(await queries.count_by_status(db))
        workers = await queries.list_workers(db, settings.worker_timeout_s)
        return {
            "counts": counts, "total": sum(counts.values()), "workers": workers,
            "free_slots": sum(w["free_slots"] for w in workers),
            "capacity": sum(w["capacity"] for w in workers),
            "now": datetime.now(UTC),
        }

    async def charts_context() -> dict[str, Any]:
        finished = await ui_queries.finished_per_minute(db, CHART_MINUTES)
        backlog = await ui_queries.due_backlog(db, CHART_MINUTES)
        return {"throughput": chart(finished), "backlog": chart(backlog),
                "minutes": CHART_MINUTES}

    @ui_route("/ui", methods=["GET"])
    async def overview() -> Response:
        return await page("overview.html", nav="overview", **await overview_context(),
                          **await charts_context())

    @ui_route("/ui/fragments/overview", methods=["GET"])
    async def overview_fragment() -> Response:
        return await page("_overview.html", **await overview_context())

    @ui_route("/ui/fragments/charts", methods=["GET"])
    async def charts_fragment() -> Response:
        return await page("_charts.html", **await charts_context())

    # ------------------------------------------------------------------ tasks

    def list_args() -> tuple[Status | None, str | None, str | None]:
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
                rows, cursor = await queries.list_tasks(db, status=status, limit=PAGE_SIZE,
                                                        after=after)
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

    @ui_route("/ui/tasks", methods=["GET"])
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

    @ui_route("/ui/fragments/tasks", methods=["GET"])
    async def tasks_fragment() -> Response:
        return await page("_tasks.html", **await tasks_context())

    async def load_task(task_id: str) -> Any:
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            return None
        return await queries.get_task(db, parsed)

    def task_context(row: Any, message: str | None = None) -> dict[str, Any]:
        return {"task": row, "cancellable": Status(row["status"]) in CANCELLABLE,
                "finished": Status(row["status"]).terminal, "message": message}

    @ui_route("/ui/tasks/<task_id>", methods=["GET"])
    async def task(task_id: str) -> Response:
        row = await load_task(task_id)
        if row is None:
            return await page("not_found.html", code=404, nav="tasks",
                              what=f"No task with id {task_id[:80]!r}.")
        return await page("task.html", nav="tasks", **task_context(row))

    @ui_route("/ui/fragments/tasks/<task_id>", methods=["GET"])
    async def task_fragment(task_id: str) -> Response:
        row = await load_task(task_id)
        if row is None:
            return Response("no such task", status=404)
        return await page("_task.html", **task_context(row))

    @ui_route("/ui/tasks/<task_id>/cancel", methods=["POST"])
    async def cancel(task_id: str) -> Response:
        rejected = check_csrf(await request.form)
        if rejected:
            return rejected
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            return await page("not_found.html", code=404, nav="tasks",
                              what=f"No task with id {task_id[:80]!r}.")
        outcome, row = await queries.cancel_task(db, parsed)
        if outcome == "unknown":
            return await page("not_found.html", code=404, nav="tasks",
                              what=f"No task with id {parsed}.")
        if outcome == "finished":
            message = f"Not cancelled: the task had already finished as {row['status']}."
        else:
            message = "Cancelled."
            log.info("task cancelled", action="task_cancelled", task_id=str(parsed),
                     worker_id=row["held_by"], via="ui")
            row = await queries.get_task(db, parsed)
        if is_htmx():
            return await page("_task.html", **task_context(row, message))
        return see_other(f"/ui/tasks/{parsed}")

    # ------------------------------------------------------------------ schedules

    async def schedules_context() -> dict[str, Any]:
        rows, cursor = await db_schedules.list_schedules(db, limit=SCHEDULE_PAGE, after=None)
        return {"schedules": rows, "more": cursor is not None}

    @ui_route("/ui/schedules", methods=["GET"])
    async def schedules() -> Response:
        return await page("schedules.html", nav="schedules", **await schedules_context())

    @ui_route("/ui/fragments/schedules", methods=["GET"])
    async def schedules_fragment() -> Response:
        return await page("_schedules.html", **await schedules_context())

    app.register_blueprint(bp)
