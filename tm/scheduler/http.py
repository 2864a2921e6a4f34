"""HTTP plumbing every route shares; `install` puts it on the app.

Rules kept here, for every route (the JSON API and the dashboard alike):
* Request bodies are read as JSON whatever the Content-Type says (`curl -d` sends a form
  content type and must work): `read_json`.
* Every answer of the API is JSON. A client mistake is 4xx with `{"error": "..."}` naming the
  problem (`ApiError`, or `InvalidInput` from tm.core); an unreachable database is 503 with
  `Retry-After`; an unexpected failure is a logged 500 that shows no details.
* With an API token configured, every route but OPEN_PATHS wants `Authorization: Bearer`,
  compared in constant time. The dashboard (blueprint "ui") is the one exception: it checks
  its own session cookie (tm.scheduler.ui.sessions).
* A body over MAX_BODY_BYTES is a 413. An answer sent before its request's body arrived
  closes the connection, so the unread rest is not taken for the next request.

Routes get what they work with from `services()`: the one `Services` of their app.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
import structlog
from quart import Blueprint, Quart, Response, current_app, request
from quart_schema import document_response, tag_blueprint
from werkzeug.exceptions import HTTPException

from tm import metrics
from tm.aio.pg import Database, DatabaseUnavailable
from tm.core.tasks import InvalidInput
from tm.scheduler import schemas as sc
from tm.scheduler.ingest import GroupCommit
from tm.settings import SchedulerSettings

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

MAX_BODY_BYTES = 32 * 1024 * 1024
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs"})
UI_BLUEPRINT = "ui"
_SERVICES = "tm"  # the key of `Services` in app.extensions


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes of one app work with."""

    settings: SchedulerSettings
    db: Database
    # Single-task inserts and batches go through group commit (tm.scheduler.ingest).
    ingest: GroupCommit


def services() -> Services:
    """The `Services` of the app serving the current request."""
    return cast(Services, current_app.extensions[_SERVICES])


def api_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint of API routes, grouped under the tag `name` in /openapi.json (describe
    the tag in tm.scheduler.app.TAGS)."""
    blueprint = Blueprint(name, import_name)
    tag_blueprint(blueprint, [name])
    return blueprint


class ApiError(Exception):
    """Answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------- answers


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


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


def errors(*codes: int) -> Callable[[F], F]:
    """Document the error answers of a route: its own, plus 401 and 503 every route can give."""

    def decorate(fn: F) -> F:
        for code in sorted({*codes, 401, 503}):
            fn = document_response(sc.Error, code)(fn)
        return fn

    return decorate


# ---------------------------------------------------------------------------- bodies


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


def _body_received() -> bool:
    """Whether the whole request body has arrived (quart's Body, pinned: private event)."""
    complete = getattr(request.body, "_complete", None)
    return bool(complete is not None and complete.is_set())


# ---------------------------------------------------------------------------- the app


def install(app: Quart, services: Services) -> None:
    """Give `app` the rules above and `services` for its routes."""
    app.extensions[_SERVICES] = services
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # OPTIONS would answer an empty text/html body; without it, a JSON 405 says what's allowed.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    token = services.settings.api_token
    if token is not None:
        app.before_request(_bearer_check(token))
    app.after_request(_count_and_close)
    app.register_error_handler(ApiError, _on_api_error)
    app.register_error_handler(InvalidInput, _on_invalid)
    app.register_error_handler(DatabaseUnavailable, _on_db_down)
    app.register_error_handler(HTTPException, _on_http_error)
    app.register_error_handler(Exception, _on_unexpected)


def _bearer_check(token: str) -> Callable[[], Any]:
    expected = token.encode()

    async def check_token() -> Response | None:
        if request.path in OPEN_PATHS or request.blueprints[-1:] == [UI_BLUEPRINT]:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            response = error_response(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="taskmaster"'
            return response
        return None

    return check_token


async def _count_and_close(response: Response) -> Response:
    metrics.HTTP_REQUESTS.labels(request.method, str(response.status_code)).inc()
    if request.content_length and not _body_received():
        # Answered before its body arrived (401, a bad id, 413, ...): the rest would be
        # taken for the next request on a kept-alive connection. Close it instead.
        response.headers["Connection"] = "close"
    return response


async def _on_api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message)


async def _on_invalid(exc: InvalidInput) -> Response:
    return error_response(400, str(exc))


async def _on_db_down(exc: DatabaseUnavailable) -> Response:
    log.warning("database unavailable", action="db_unavailable", error=str(exc))
    response = error_response(503, "database unavailable; try again shortly")
    response.headers["Retry-After"] = "1"
    return response


async def _on_http_error(exc: HTTPException) -> Response:
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


async def _on_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error", action="http_500", path=request.path)
    return error_response(500, "internal error")
