"""Task and worker rows as the JSON objects of the HTTP contract."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tm.core.schedules import SCHEDULE_FIELDS
from tm.core.tasks import TASK_FIELDS
from tm.core.timefmt import format_time

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


def task_json(row: Any, times: dict[datetime, str | None] | None = None) -> dict[str, Any]:
    """Every contract field present; unset ones are null; times in UTC with microseconds.

    `times` caches formatted times across the rows of one answer (see `tasks_json`).
    """
    out = {field: row[field] for field in TASK_FIELDS}
    out["task_id"] = str(out["task_id"])
    for field in _TASK_TIME_FIELDS:
        value = out[field]
        if value is None:
            continue
        if times is None:
            out[field] = format_time(value)
        else:
            text = times.get(value)
            if text is None:
                text = times[value] = format_time(value)
            out[field] = text
    return out


def tasks_json(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Many rows; the times they share (a batch's `scheduled_at`, `created_at`) are
    formatted once."""
    times: dict[datetime, str | None] = {}
    return [task_json(row, times) for row in rows]


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
