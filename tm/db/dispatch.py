"""The dispatch path: when the next task is due, claiming due tasks, handing pushes back.

A claim is one statement, committed before anything is pushed: `FOR UPDATE SKIP LOCKED`
lets any number of coordinators claim at once without ever sharing a task, and it reads
the due index (`tasks_scheduled_due`, partial on status = 'scheduled') in order, so its cost
does not grow with the finished tasks in the table. A push that certainly never arrived is
handed back (`undo_push`), fenced by attempt. The transitions are tm.core.lifecycle's
Action.CLAIM and Action.PUSH_FAILED (statuses from tm/db/transitions.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tm.aio.pg import Connection, Database
from tm.core.lifecycle import Action
from tm.db.transitions import accepts, target

NEXT_DUE_IN = """
SELECT extract(epoch FROM scheduled_at - clock_timestamp())::float8
FROM tasks WHERE status = 'scheduled' ORDER BY scheduled_at, task_id LIMIT 1
"""

# For the statements that read the due index (`tasks_scheduled_due`) from its start: with
# sorts and bitmap scans off, walking that index in order and stopping early is the only
# plan. The planner's count of scheduled tasks comes from the last ANALYZE, and a queue
# outruns that: with a million tasks submitted since, still estimated at one, it read all
# of them (by a bitmap scan, or by another index on status) and sorted or aggregated them
# for each claim — 300-2,000 ms instead of 20; the drain of a 1,000,000-task backlog went
# at a quarter of its speed — and took 250 ms to find the next due time.
IN_DUE_ORDER = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off"


async def _in_due_order(db: Database, method: str, sql: str, *args: Any) -> Any:
    """Run one statement that reads the due index in order (see IN_DUE_ORDER)."""

    async def work(conn: Connection) -> Any:
        async with conn.transaction():
            await conn.execute(IN_DUE_ORDER)
            return await getattr(conn, method)(sql, *args)

    return await db.run(work)


# The due rows are read by `status = 'scheduled'` exactly, the predicate of the partial
# index: accepts(Action.CLAIM) renders it so, and tests/integration/test_statement_plans.py
# checks the plan.
CLAIM = f"""
WITH due AS (
    SELECT task_id, scheduled_at FROM tasks
    WHERE {accepts(Action.CLAIM, "status")} AND scheduled_at <= clock_timestamp()
    ORDER BY scheduled_at, task_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT task_id, row_number() OVER (ORDER BY scheduled_at, task_id) AS slot FROM due
), slots AS (
    SELECT worker_id, slot FROM unnest($1::text[]) WITH ORDINALITY AS s(worker_id, slot)
)
UPDATE tasks t
SET status = {target(Action.CLAIM)}, attempt = t.attempt + 1, picked_at = clock_timestamp(),
    started_at = NULL, worker_id = slots.worker_id, coordinator_id = $3,
    lease_expires_at = clock_timestamp() + make_interval(secs => $4)
FROM numbered JOIN slots USING (slot)
WHERE t.task_id = numbered.task_id
RETURNING t.task_id, t.command, t.attempt, t.scheduled_at, t.timeout_s, t.worker_id,
          t.picked_at
"""

# Nothing ran: the pick is undone (worker and pick time forgotten), the attempt kept.
UNDO_PUSH = f"""
UPDATE tasks t SET status = {target(Action.PUSH_FAILED)}, worker_id = NULL, picked_at = NULL,
                   lease_expires_at = NULL
FROM unnest($1::uuid[], $2::int[]) AS p(task_id, attempt)
WHERE t.task_id = p.task_id AND t.attempt = p.attempt AND {accepts(Action.PUSH_FAILED)}
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    task_id: uuid.UUID
    command: str
    attempt: int
    scheduled_at: datetime
    timeout_s: float | None
    worker_id: str
    picked_at: datetime


async def seconds_until_due(db: Database) -> float | None:
    """Seconds until the earliest scheduled task is due (negative: overdue), by the
    database's clock; None when nothing is scheduled."""
    value = await _in_due_order(db, "fetchval", NEXT_DUE_IN)
    return None if value is None else float(value)


async def claim(
    db: Database, slots: Sequence[str], coordinator_id: str, lease_s: float
) -> list[Claimed]:
    """Claim up to len(slots) due tasks, oldest due first, the i-th going to slots[i].

    One statement, committed before anything is pushed; SKIP LOCKED lets any number of
    coordinators claim at once without ever sharing a task. Reads the due index in order
    whatever the planner's statistics say (IN_DUE_ORDER).
    """
    if not slots:
        return []
    rows = await _in_due_order(db, "fetch", CLAIM, list(slots), len(slots), coordinator_id,
                               lease_s)
    return [
        Claimed(
            r["task_id"],
            r["command"],
            r["attempt"],
            r["scheduled_at"],
            r["timeout_s"],
            r["worker_id"],
            r["picked_at"],
        )
        for r in rows
    ]


async def undo_push(db: Database, tasks: Sequence[tuple[uuid.UUID, int]]) -> int:
    """Tasks whose push certainly never reached the worker become claimable again."""
    if not tasks:
        return 0
    status = await db.execute(UNDO_PUSH, [t for t, _ in tasks], [a for _, a in tasks])
    return int(status.split()[-1])
