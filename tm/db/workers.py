"""Worker rows: heartbeats (with the lease renewals they carry), listings, forgetting.

A heartbeat is one transaction: the worker's row upserted, then the leases of the tasks it
says it holds renewed — only for the attempt it names and only while the task is still
held by it, so a late heartbeat never revives a task that moved on. The times are the
database's (clock_timestamp()), like every lease and liveness comparison.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tm.aio.pg import Connection, Database

LIST_WORKERS = """
SELECT worker_id, address, state, capacity, free_slots, last_heartbeat_at FROM workers
WHERE last_heartbeat_at > clock_timestamp() - make_interval(secs => $1)
ORDER BY worker_id
"""

UPSERT_WORKER = """
INSERT INTO workers (worker_id, address, state, capacity, free_slots, coordinator_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (worker_id) DO UPDATE SET address = excluded.address, state = excluded.state,
    capacity = excluded.capacity, free_slots = excluded.free_slots,
    coordinator_id = excluded.coordinator_id, last_heartbeat_at = clock_timestamp()
"""

DELETE_WORKER = "DELETE FROM workers WHERE worker_id = $1 AND coordinator_id = $2"

DELETE_SILENT_WORKERS = """
DELETE FROM workers WHERE last_heartbeat_at < clock_timestamp() - make_interval(secs => $1)
"""

RENEW_LEASES = """
UPDATE tasks t SET lease_expires_at = clock_timestamp() + make_interval(secs => $4)
FROM unnest($2::uuid[], $3::int[]) AS h(task_id, attempt)
WHERE t.task_id = h.task_id AND t.attempt = h.attempt AND t.worker_id = $1
  AND t.status IN ('picked', 'running')
"""


async def list_workers(db: Database, alive_within_s: float) -> list[Any]:
    return await db.fetch(LIST_WORKERS, alive_within_s)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    address: str
    draining: bool
    capacity: int
    free_slots: int
    held: Sequence[tuple[uuid.UUID, int]]


async def record_heartbeat(
    db: Database, worker: WorkerRecord, coordinator_id: str, lease_s: float
) -> None:
    """Upsert the worker's row and renew the leases of the tasks it holds; one transaction."""

    async def work(conn: Connection) -> None:
        await conn.execute(
            UPSERT_WORKER,
            worker.worker_id,
            worker.address,
            "draining" if worker.draining else "active",
            worker.capacity,
            worker.free_slots,
            coordinator_id,
        )
        if worker.held:
            await conn.execute(
                RENEW_LEASES,
                worker.worker_id,
                [t for t, _ in worker.held],
                [a for _, a in worker.held],
                lease_s,
            )

    await db.transaction(work)


async def forget_worker(db: Database, worker_id: str, coordinator_id: str) -> None:
    await db.execute(DELETE_WORKER, worker_id, coordinator_id)


async def forget_silent_workers(db: Database, silent_for_s: float) -> None:
    await db.execute(DELETE_SILENT_WORKERS, silent_for_s)
