"""Lost workers: their held tasks go back to scheduled, or fail.

Two statements apply tm.core.lifecycle's Action.WORKER_LOST (status, budget and error from
tm/db/transitions.py): one for a worker known gone (its coordinator saw it go), one for
tasks whose lease ran out, whoever's they were (their coordinator is gone too). A requeued
task keeps its last worker's name and error until it is picked again; one that ran out of
its loss budget (or is at-most-once) fails with error "worker lost", keeping the times of
the attempt it lost.
"""

from __future__ import annotations

from typing import Any

from tm.aio.pg import Database
from tm.core.lifecycle import LOSSES, Action
from tm.core.tasks import Status
from tm.db.transitions import accepts, ends_in, exhausted_error, spend, target

_LOST = Action.WORKER_LOST
_FAILS = ends_in(_LOST, Status.FAILED)

_RECOVER_SET = f"""
    status = {target(_LOST)},
    failed_at = CASE WHEN {_FAILS} THEN clock_timestamp() END,
    error = CASE WHEN {_FAILS} THEN {exhausted_error(LOSSES, "t.error")} ELSE t.error END,
    picked_at = CASE WHEN {_FAILS} THEN t.picked_at END,
    started_at = CASE WHEN {_FAILS} THEN t.started_at END,
    {LOSSES.counter} = {spend(LOSSES)}, lease_expires_at = NULL
"""

# Both read the held tasks through the partial indexes on status IN ('picked', 'running').
RECOVER_WORKER_TASKS = f"""
UPDATE tasks t SET {_RECOVER_SET}
WHERE t.worker_id = $1 AND {accepts(_LOST)}
RETURNING t.task_id, t.status
"""

RECOVER_EXPIRED_LEASES = f"""
UPDATE tasks t SET {_RECOVER_SET}
WHERE t.task_id IN (SELECT task_id FROM tasks
                    WHERE {accepts(_LOST, "status")} AND lease_expires_at < clock_timestamp()
                    LIMIT 10000 FOR UPDATE SKIP LOCKED)
RETURNING t.task_id, t.status
"""


async def recover_worker_tasks(db: Database, worker_id: str) -> list[Any]:
    """The worker is gone: its tasks go back to scheduled, or fail (at-most-once, loss cap)."""
    return await db.fetch(RECOVER_WORKER_TASKS, worker_id)


async def recover_expired_leases(db: Database) -> list[Any]:
    """Held tasks whose lease ran out (up to 10,000 a call), recovered the same way."""
    return await db.fetch(RECOVER_EXPIRED_LEASES)
