"""How the `tm` client shows API objects to a person: tables, key/value blocks, watch lines.

Pure functions from the API's JSON (dicts) to text; the client commands (tm.client.cli) do
the I/O. Scripts should not parse this text — `--json` prints the API's documents as they
are. What a person gets:

* lists are tables with a header and columns aligned by two spaces; the last column is not
  padded, so no line carries trailing blanks; the command column is cut to the width given,
  with control characters (newlines, tabs) shown as spaces so that one task is one line;
* times in tables drop the microseconds (`2026-11-27T03:31:57Z`); blocks show them whole;
* a missing value (`null`) is `-`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MIN_COMMAND_WIDTH = 20
_GAP = "  "
_ELLIPSIS = "..."
_WIRE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.\d+Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

TASK_COLUMNS = ("TASK_ID", "STATUS", "ATTEMPT", "SCHEDULED_AT", "WORKER", "COMMAND")
WORKER_COLUMNS = ("WORKER_ID", "STATE", "FREE/CAP", "ADDRESS", "LAST_HEARTBEAT_AT")


def show(value: Any) -> str:
    """A JSON value for a person: `-` for null, numbers and strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def short_time(value: Any) -> str:
    """`2026-11-27T03:31:57Z` from the API's `2026-11-27T03:31:57.123456Z`."""
    if not isinstance(value, str):
        return show(value)
    match = _WIRE_TIME.fullmatch(value)
    return f"{match.group(1)}Z" if match else value


def one_line(text: str, width: int) -> str:
    """`text` on one line of at most `width` characters (cut ones end in `...`)."""
    flat = _CONTROL.sub(" ", text)
    if len(flat) <= width:
        return flat
    return flat[: max(width - len(_ELLIPSIS), 0)] + _ELLIPSIS


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns; the last one unpadded."""
    lines = [list(header), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [cell.ljust(w) for cell, w in zip(line, widths, strict=False)]
        out.append(_GAP.join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def tasks_table(tasks: Sequence[Mapping[str, Any]], width: int) -> str:
    """One task a line; the command column gets what `width` leaves (at least 20)."""
    if not tasks:
        return "no tasks"
    rows = [
        [
            show(t.get("task_id")),
            show(t.get("status")),
            f"{show(t.get('attempt'))}/{show(t.get('max_attempts'))}",
            short_time(t.get("scheduled_at")),
            show(t.get("worker_id")),
        ]
        for t in tasks
    ]
    fixed = [max(len(r[i]) for r in [list(TASK_COLUMNS), *rows]) for i in range(len(rows[0]))]
    command_width = max(MIN_COMMAND_WIDTH, width - sum(fixed) - len(_GAP) * len(fixed))
    for row, task in zip(rows, tasks, strict=True):
        row.append(one_line(show(task.get("command")), command_width))
    return table(TASK_COLUMNS, rows)


def workers_table(workers: Sequence[Mapping[str, Any]]) -> str:
    if not workers:
        return "no workers"
    rows = [
        [
            show(w.get("worker_id")),
            show(w.get("state")),
            f"{show(w.get('free_slots'))}/{show(w.get('capacity'))}",
            show(w.get("address")),
            short_time(w.get("last_heartbeat_at")),
        ]
        for w in workers
    ]
    return table(WORKER_COLUMNS, rows)


def block(obj: Mapping[str, Any]) -> str:
    """Every field, one `key  value` line each in the API's order; multi-line values indented."""
    if not obj:
        return ""
    width = max(len(k) for k in obj)
    indent = " " * (width + len(_GAP))
    lines = []
    for key, value in obj.items():
        text = show(value).rstrip("\n")
        first, *rest = text.split("\n") if text else [""]
        lines.append(f"{key.ljust(width)}{_GAP}{first}".rstrip())
        lines.extend(f"{indent}{line}".rstrip() for line in rest)
    return "\n".join(lines)


# The time field that says when a task reached each status.
_STATUS_TIME = {
    "scheduled": "scheduled_at",
    "picked": "picked_at",
    "running": "started_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "cancelled": "cancelled_at",
}


def watch_line(task: Mapping[str, Any]) -> str:
    """One line for a status seen by `tm watch`: status, attempt, worker, when, and outcome."""
    status = show(task.get("status"))
    parts = [status.ljust(9), f"attempt={show(task.get('attempt'))}"]
    if task.get("worker_id") is not None:
        parts.append(f"worker={show(task.get('worker_id'))}")
    time_field = _STATUS_TIME.get(status)
    if time_field is not None:
        parts.append(f"{time_field}={show(task.get(time_field))}")
    if status in ("completed", "failed") and task.get("exit_code") is not None:
        parts.append(f"exit_code={show(task.get('exit_code'))}")
    if task.get("error") is not None:
        parts.append(f"error={one_line(show(task.get('error')), 200)}")
    return _GAP.join(parts)


SCHEDULE_COLUMNS = ("NAME", "CRON", "TIMEZONE", "STATE", "NEXT_FIRE_AT", "LAST_FIRE_AT",
                    "COMMAND")


def schedules_table(schedules: Sequence[Mapping[str, Any]], width: int) -> str:
    """One schedule a line; the command column gets what `width` leaves (at least 20)."""
    if not schedules:
        return "no schedules"
    rows = [
        [
            show(s.get("name")),
            one_line(show(s.get("cron")), 40),
            show(s.get("timezone")),
            "paused" if s.get("paused") else "active",
            short_time(s.get("next_fire_at")),
            short_time(s.get("last_fire_at")),
        ]
        for s in schedules
    ]
    fixed = [max(len(r[i]) for r in [list(SCHEDULE_COLUMNS), *rows]) for i in range(len(rows[0]))]
    command_width = max(MIN_COMMAND_WIDTH, width - sum(fixed) - len(_GAP) * len(fixed))
    for row, schedule in zip(rows, schedules, strict=True):
        row.append(one_line(show(schedule.get("command")), command_width))
    return table(SCHEDULE_COLUMNS, rows)
