"""The SQL of recurring schedules, named, with the functions that run it.

Times that decide anything come from the database's clock (`clock_timestamp()`), the clock
every coordinator shares; the decisions themselves are tm.core.schedules, called inside the
transaction. Changes made through the API are announced with NOTIFY tm_schedules
(tm/db/notify.py) so that coordinators re-plan their timers at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tm.aio.pg import Connection, Database
from tm.core.recurrence import parse_recurrence
from tm.core.schedules import (
    CatchUp,
    Overlap,
    Plan,
    ScheduleSpec,
    check_fires,
    first_fire_at,
    parse_schedule_patch,
    plan_occurrences,
)
from tm.core.tasks import InvalidInput
from tm.db import notify
from tm.ids import new_id

SCHEDULE_COLUMNS = """name, cron, timezone, command, max_attempts, timeout_s, at_most_once,
    overlap, catch_up, paused, created_at, updated_at, next_fire_at, last_fire_at,
    skipped_runs, missed_runs"""

NOW = "SELECT clock_timestamp()"
NOTIFY_CHANGED = notify.notify_statement(notify.SCHEDULES)

INSERT_SCHEDULE = f"""
INSERT INTO schedules (name, cron, timezone, command, max_attempts, timeout_s, at_most_once,
                       overlap, catch_up, paused, next_fire_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
ON CONFLICT (name) DO NOTHING
RETURNING {SCHEDULE_COLUMNS}
"""

SELECT_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = $1"
SELECT_SCHEDULE_FOR_UPDATE = SELECT_SCHEDULE + " FOR UPDATE"

LIST_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE $1::text IS NULL OR name > $1
ORDER BY name LIMIT $2
"""

UPDATE_SCHEDULE = f"""
UPDATE schedules SET cron = $2, timezone = $3, command = $4, max_attempts = $5,
    timeout_s = $6, at_most_once = $7, overlap = $8, catch_up = $9, paused = $10,
    next_fire_at = $11, updated_at = $12
WHERE name = $1
RETURNING {SCHEDULE_COLUMNS}
"""

DELETE_SCHEDULE = f"DELETE FROM schedules WHERE name = $1 RETURNING {SCHEDULE_COLUMNS}"

# ---------------------------------------------------------------------------- materializing

DUE_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules
WHERE next_fire_at IS NOT NULL AND next_fire_at <= $1
ORDER BY next_fire_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

SCHEDULES_WITH_UNFINISHED_RUNS = """
SELECT DISTINCT schedule_name FROM tasks
WHERE schedule_name = ANY($1::text[]) AND status IN ('scheduled', 'picked', 'running')
"""

INSERT_OCCURRENCES = """
INSERT INTO tasks (task_id, command, scheduled_at, max_attempts, timeout_s, at_most_once,
                   schedule_name, fire_at)
SELECT id, cmd, at, attempts, timeout, amo, name, at
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::float8[], $6::bool[],
            $7::text[]) AS n(id, cmd, at, attempts, timeout, amo, name)
ON CONFLICT (schedule_name, fire_at) WHERE schedule_name IS NOT NULL DO NOTHING
RETURNING task_id, schedule_name, fire_at
"""

ADVANCE_SCHEDULES = """
UPDATE schedules s SET next_fire_at = u.next_fire_at,
    last_fire_at = greatest(s.last_fire_at, u.last_fire_at),
    skipped_runs = s.skipped_runs + u.skipped, missed_runs = s.missed_runs + u.missed
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[], $5::bigint[])
     AS u(name, next_fire_at, last_fire_at, skipped, missed)
WHERE s.name = u.name
"""

NEXT_FIRE_IN = """
SELECT extract(epoch FROM min(next_fire_at) - clock_timestamp())::float8
FROM schedules WHERE next_fire_at IS NOT NULL
"""


def spec_from_row(row: Any) -> ScheduleSpec:
    """A stored schedule as a spec (InvalidInput if its time zone is no longer known)."""
    return ScheduleSpec(
        name=row["name"],
        recurrence=parse_recurrence(row["cron"], row["timezone"]),
        command=row["command"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        at_most_once=row["at_most_once"],
        overlap=Overlap(row["overlap"]),
        catch_up=CatchUp(row["catch_up"]),
        paused=row["paused"],
    )


def _spec_args(spec: ScheduleSpec) -> tuple[Any, ...]:
    return (
        spec.cron,
        spec.timezone,
        spec.command,
        spec.max_attempts,
        spec.timeout_s,
        spec.at_most_once,
        spec.overlap.value,
        spec.catch_up.value,
        spec.paused,
    )


async def create_schedule(db: Database, spec: ScheduleSpec) -> Any:
    """Store a new schedule; its first occurrence is the first fire time after now.
    None if the name is taken."""

    async def work(conn: Connection) -> Any:
        now = await conn.fetchval(NOW)
        check_fires(spec, now)
        row = await conn.fetchrow(
            INSERT_SCHEDULE, spec.name, *_spec_args(spec), first_fire_at(spec, now), now
        )
        if row is not None:
            await conn.execute(NOTIFY_CHANGED, spec.name)
        return row

    return await db.transaction(work)


async def get_schedule(db: Database, name: str) -> Any:
    return await db.fetchrow(SELECT_SCHEDULE, name)


async def list_schedules(
    db: Database, *, limit: int, after: str | None
) -> tuple[list[Any], str | None]:
    """A page of schedules by name, and the cursor of the next page (None at the end)."""
    rows = await db.fetch(LIST_SCHEDULES, after, limit + 1)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, rows[-1]["name"]


async def update_schedule(db: Database, name: str, body: object) -> Any:
    """Apply a PATCH body; None if there is no such schedule. InvalidInput for bad input.

    Pausing clears the next occurrence; resuming, or changing `cron` or `timezone`, sets it
    to the first fire time after now (what was due while paused is not caught up).
    """

    async def work(conn: Connection) -> Any:
        row = await conn.fetchrow(SELECT_SCHEDULE_FOR_UPDATE, name)
        if row is None:
            return None
        edit = parse_schedule_patch(row, body)
        if not edit.changed:
            return row
        now = await conn.fetchval(NOW)
        next_fire = row["next_fire_at"]
        if edit.timing_changed:
            check_fires(edit.spec, now)
        if edit.paused or edit.resumed or edit.timing_changed:
            next_fire = first_fire_at(edit.spec, now)
        updated = await conn.fetchrow(
            UPDATE_SCHEDULE, name, *_spec_args(edit.spec), next_fire, now
        )
        await conn.execute(NOTIFY_CHANGED, name)
        return updated

    return await db.transaction(work)


async def delete_schedule(db: Database, name: str) -> Any:
    """Delete a schedule (its tasks stay); the deleted row, or None if there was none."""

    async def work(conn: Connection) -> Any:
        row = await conn.fetchrow(DELETE_SCHEDULE, name)
        if row is not None:
            await conn.execute(NOTIFY_CHANGED, name)
        return row

    return await db.transaction(work)


# ---------------------------------------------------------------------------- materializing


@dataclass(frozen=True, slots=True)
class Decided:
    """What one round did with one schedule."""

    name: str
    plan: Plan
    created: tuple[tuple[uuid.UUID, datetime], ...]  # (task_id, fire_at) inserted
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Round:
    now: datetime | None
    decided: list[Decided] = field(default_factory=list)
    more: bool = False  # go again at once: a limit was reached


async def materialize_due(
    db: Database,
    *,
    grace: timedelta,
    max_schedules: int = 100,
    max_occurrences: int = 1000,
) -> Round:
    """Create the tasks of every due occurrence of up to `max_schedules` schedules; one
    transaction, one bridge crossing.

    Schedules locked by another coordinator are skipped (SKIP LOCKED); the unique index on
    (schedule_name, fire_at) makes a repeated occurrence a no-op in any case. Each task's
    scheduled_at is its fire time, so it never starts early.
    """

    async def work(conn: Connection) -> Round:
        now: datetime = await conn.fetchval(NOW)
        rows = await conn.fetch(DUE_SCHEDULES, now, max_schedules)
        if not rows:
            return Round(now)
        skip = [r["name"] for r in rows if r["overlap"] == Overlap.SKIP]
        busy: set[str] = set()
        if skip:
            busy = {r[0] for r in await conn.fetch(SCHEDULES_WITH_UNFINISHED_RUNS, skip)}
        plans: list[tuple[Any, Plan, str | None]] = []
        for row in rows:
            try:
                spec = spec_from_row(row)
            except InvalidInput as exc:
                plans.append((row, Plan((), 0, 0, None, False), str(exc)))
                continue
            plan = plan_occurrences(
                spec.recurrence,
                row["next_fire_at"],
                now,
                catch_up=spec.catch_up,
                overlap=spec.overlap,
                unfinished_run=spec.name in busy,
                grace=grace,
                limit=max_occurrences,
            )
            plans.append((row, plan, None))
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for row, plan, _ in plans:
            for fire in plan.run:
                for column, value in zip(
                    columns,
                    (new_id(), row["command"], fire, row["max_attempts"], row["timeout_s"],
                     row["at_most_once"], row["name"]),
                    strict=True,
                ):
                    column.append(value)
        inserted: dict[str, list[tuple[uuid.UUID, datetime]]] = {}
        if columns[0]:
            for r in await conn.fetch(INSERT_OCCURRENCES, *columns):
                inserted.setdefault(r["schedule_name"], []).append((r["task_id"], r["fire_at"]))
        await conn.execute(
            ADVANCE_SCHEDULES,
            [row["name"] for row, _, _ in plans],
            [plan.next_fire_at for _, plan, _ in plans],
            [max(plan.run) if plan.run else None for _, plan, _ in plans],
            [plan.skipped for _, plan, _ in plans],
            [plan.missed for _, plan, _ in plans],
        )
        decided = [
            Decided(row["name"], plan, tuple(inserted.get(row["name"], ())), error)
            for row, plan, error in plans
        ]
        more = len(rows) == max_schedules or any(plan.more for _, plan, _ in plans)
        return Round(now, decided, more)

    return await db.transaction(work)


async def seconds_until_next_fire(db: Database) -> float | None:
    """Seconds until the earliest next occurrence of any active schedule (negative: due),
    by the database's clock; None when no schedule will fire."""
    value = await db.fetchval(NEXT_FIRE_IN)
    return None if value is None else float(value)


def fire_times(decided: Sequence[Decided]) -> list[datetime]:
    return [fire for d in decided for _, fire in d.created]
