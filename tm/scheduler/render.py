"""Task and worker rows as the JSON objects of the HTTP contract."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tm.core.schedules import SCHEDULE_FIELDS
from tm.core.tasks import TASK_FIELDS
from tm.core.timefmt import format_time
from tm.db.tasks import NEW_ROW_DEFAULTS, Inserted

_TIME_FIELDS = frozenset(
    {
        "scheduled_at",
        "created_at",
        "picked_at",
        "started_at",
        "completed_at",
        "failed_at",
        "cancelled_at",
        "last_heartbeat_at",
    }
)


_TASK_TIME_FIELDS = tuple(f for f in TASK_FIELDS if f in _TIME_FIELDS)


Times = dict[datetime, str | None]


def _format_once(value: datetime, times: Times) -> str | None:
    """format_time(value), formatted once per answer: `times` caches it."""
    text = times.get(value)
    if text is None:
        text = times[value] = format_time(value)
    return text


def task_json(row: Any, times: Times | None = None) -> dict[str, Any]:
    """Every contract field present; unset ones are null; times in UTC with microseconds.

    `times` caches formatted times across the rows of one answer (see `tasks_json`).
    """
    times = {} if times is None else times
    out = {field: row[field] for field in TASK_FIELDS}
    out["task_id"] = str(out["task_id"])
    for field in _TASK_TIME_FIELDS:
        value = out[field]
        if value is not None:
            out[field] = _format_once(value, times)
    return out


def tasks_json(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Many rows; the times they share (a batch's `scheduled_at`, `created_at`) are
    formatted once."""
    times: Times = {}
    return [task_json(row, times) for row in rows]


# A new task's answer, in contract order, with the fields its input sets still None.
_NEW_TASK_JSON = {field: NEW_ROW_DEFAULTS.get(field) for field in TASK_FIELDS}


def inserted_json(results: Iterable[Inserted]) -> list[dict[str, Any]]:
    """The answer to a batch: like `tasks_json` of each result's row, built straight from
    the input for the tasks just created (the hot path of batch ingest)."""
    times: Times = {}
    out = []
    for result in results:
        if not result.created:
            out.append(task_json(result.existing, times))
            continue
        task, created_at = result.task, result.created_at
        assert created_at is not None
        scheduled_at = task.scheduled_at or created_at
        item = dict(_NEW_TASK_JSON)
        item["task_id"] = str(task.task_id)
        item["command"] = task.command
        item["scheduled_at"] = _format_once(scheduled_at, times)
        item["created_at"] = _format_once(created_at, times)
        item["max_attempts"] = task.max_attempts
        out.append(item)
    return out


def worker_json(row: Any) -> dict[str, Any]:
    return {
        "worker_id": row["worker_id"],
        "address": row["address"],
        "state": row["state"],
        "capacity": row["capacity"],
        "free_slots": row["free_slots"],
        "last_heartbeat_at": format_time(row["last_heartbeat_at"]),
    }


_SCHEDULE_TIME_FIELDS = frozenset({"created_at", "updated_at", "next_fire_at", "last_fire_at"})


def schedule_json(row: Any) -> dict[str, Any]:
    """A schedule row as the API shows it: every field, times in UTC with microseconds."""
    out: dict[str, Any] = {}
    for field in SCHEDULE_FIELDS:
        value = row[field]
        if field in _SCHEDULE_TIME_FIELDS:
            value = format_time(value)
        out[field] = value
    return out


def run_json(row: Any) -> dict[str, Any]:
    """A task a schedule created: the task object plus its `schedule` and `fire_at`."""
    return {**task_json(row), "schedule": row["schedule_name"],
            "fire_at": format_time(row["fire_at"])}
