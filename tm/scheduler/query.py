"""The query string of the list routes (`GET /tasks`, `/schedules`, `/schedules/<name>/runs`).

One reading of `limit`, `status` and `after` for all of them, so that they page and refuse
alike: a bad value is an ApiError(400) naming the parameter and what it takes. The cursor
itself is opaque here; the database module that made it checks it (tm.db).
"""

from __future__ import annotations

from quart import request

from tm.core.tasks import Status
from tm.scheduler.http import ApiError

MAX_PAGE = 1000
DEFAULT_PAGE = 100
_STATUSES = ", ".join(s.value for s in Status)


def limit_arg() -> int:
    """`limit`: 1 to MAX_PAGE, DEFAULT_PAGE when absent."""
    raw = request.args.get("limit", str(DEFAULT_PAGE))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7):
        raise ApiError(400, "limit must be an integer")
    limit = int(raw)
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}")
    return limit


def status_arg() -> Status | None:
    """`status`: one of the task statuses, or None (every status) when absent or empty."""
    raw = request.args.get("status")
    if not raw:
        return None
    try:
        return Status(raw)
    except ValueError:
        raise ApiError(400, f"status must be one of: {_STATUSES}") from None


def after_arg() -> str | None:
    """`after`: the `next` cursor of the previous page, or None for the first page."""
    return request.args.get("after") or None
