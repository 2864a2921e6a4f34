"""tm.client.render: what `tm` shows a person (tables, blocks, watch lines)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tm.client.render import block, one_line, short_time, tasks_table, watch_line, workers_table

FAST = settings(max_examples=200, deadline=None, database=None)


def task(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": "0b6f2d1e-8a4e-4d38-9a53-6a1d3b1e2f00",
        "command": "echo hello",
        "status": "completed",
        "scheduled_at": "2026-11-27T03:31:57.123456Z",
        "created_at": "2026-11-27T03:31:50.000001Z",
        "picked_at": None,
        "started_at": None,
        "completed_at": "2026-11-27T03:31:58.000000Z",
        "failed_at": None,
        "cancelled_at": None,
        "attempt": 1,
        "max_attempts": 3,
        "worker_id": "w-1",
        "exit_code": 0,
        "output": "hello\nworld\n",
        "error": None,
    }
    base.update(fields)
    return base


def test_tasks_table_aligns_columns_and_cuts_the_command() -> None:
    rows = [task(), task(task_id="x", status="scheduled", worker_id=None, command="a\tb\nc" * 50)]
    text = tasks_table(rows, width=120)
    header, first, second = text.splitlines()
    assert header.split() == ["TASK_ID", "STATUS", "ATTEMPT", "SCHEDULED_AT", "WORKER", "COMMAND"]
    for column in ("STATUS", "ATTEMPT", "SCHEDULED_AT", "WORKER", "COMMAND"):
        start = header.index(column)
        assert first[start - 2 : start] == "  " and first[start] != " ", (column, first)
    assert "completed" in first and "1/3" in first and "2026-11-27T03:31:57Z" in first
    assert second.split()[:5] == ["x", "scheduled", "1/3", "2026-11-27T03:31:57Z", "-"]
    assert len(second) == 120 and second.endswith("...")
    assert "\n" not in second and "\t" not in second


def test_tasks_table_keeps_a_readable_command_on_a_narrow_terminal() -> None:
    text = tasks_table([task(command="x" * 100)], width=10)
    assert text.splitlines()[1].endswith("x" * 17 + "...")


def test_empty_lists() -> None:
    assert tasks_table([], 80) == "no tasks"
    assert workers_table([]) == "no workers"


def test_workers_table() -> None:
    worker = {
        "worker_id": "w-1",
        "address": "127.0.0.1:5000",
        "state": "active",
        "capacity": 5,
        "free_slots": 4,
        "last_heartbeat_at": "2026-11-27T03:31:57.123456Z",
    }
    header, row = workers_table([worker]).splitlines()
    assert header.split() == ["WORKER_ID", "STATE", "FREE/CAP", "ADDRESS", "LAST_HEARTBEAT_AT"]
    assert row.split() == ["w-1", "active", "4/5", "127.0.0.1:5000", "2026-11-27T03:31:57Z"]


def test_block_shows_every_field_in_order() -> None:
    shown = task()
    lines = block(shown).splitlines()
    keys = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert keys == list(shown)
    assert "scheduled_at  2026-11-27T03:31:57.123456Z" in lines
    assert "picked_at     -" in lines
    # A multi-line value continues under its first line.
    at = lines.index("output        hello")
    assert lines[at + 1] == " " * 14 + "world"


def test_watch_lines() -> None:
    running = task(status="running", started_at="2026-11-27T03:31:58.1Z", exit_code=None)
    assert watch_line(running) == (
        "running    attempt=1  worker=w-1  started_at=2026-11-27T03:31:58.1Z"
    )
    failed = task(status="failed", failed_at="t", exit_code=3, error="exit code 3")
    assert watch_line(failed).endswith("failed_at=t  exit_code=3  error=exit code 3")


def test_short_time_leaves_other_text_alone() -> None:
    assert short_time("2026-11-27T03:31:57.000000Z") == "2026-11-27T03:31:57Z"
    assert short_time("soon") == "soon"
    assert short_time(None) == "-"


@FAST
@given(st.text(), st.integers(min_value=3, max_value=200))
def test_one_line_is_one_line_within_the_width(text: str, width: int) -> None:
    line = one_line(text, width)
    assert len(line) <= width
    assert "\n" not in line and "\r" not in line
    if len(text) <= width:
        assert len(line) == len(text)
