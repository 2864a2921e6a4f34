"""Every SQL statement the services run, named, with the function that runs it.

Statements are written for batches: arrays in, `unnest` inside, one statement (one
bridge crossing, one round trip) per batch. Worker reports are fenced by
`(task_id, attempt)` and the status the transition expects, mirroring tm.core.lifecycle.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from tm.aio.pg import Connection, Database
from tm.core.lifecycle import WORKER_LOST
from tm.core.tasks import InvalidInput, NewTask, Status
from tm.core.timefmt import from_micros, to_micros

TASK_COLUMNS = """task_id, command, status, scheduled_at, created_at, picked_at, started_at,
    completed_at, failed_at, cancelled_at, attempt, max_attempts, worker_id, exit_code,
    output, error"""

# ---------------------------------------------------------------------------- ingest

# One statement for a whole batch (or a group of requests). It answers one row: the
# creation time all its rows share, how many it stored, and which of the tasks carrying an
# idempotency key were stored (the others hit a known key). Everything else about a new
# row is the input and the column defaults, so no row comes back: decoding 10,000 rows
# cost more than inserting them. Multi-argument unnest pads short arrays with NULLs, so a
# column that is NULL (or its default) for every task is sent as an empty array.
# Listings order rows of equal creation time by task_id, which ascends in input order
# (UUIDv7, tm.core.ids).
# Rows go in in idempotency-key order: a statement waits for a concurrent one that holds a
# key it inserts, and two inserting the same keys in different orders each waited for the
# other until PostgreSQL aborted one as a deadlock (after 1 s; seen with batches of 2,000
# keys, one reversed). In one order, the holder of the lowest contested key goes first.
# Among equal keys input order is kept: the first task carrying a key is the one stored.
INSERT_TASKS = """
WITH stored AS (
    INSERT INTO tasks (task_id, command, scheduled_at, created_at, max_attempts, timeout_s,
                       idempotency_key, at_most_once)
    SELECT id, cmd, coalesce(at, now()), now(), attempts, timeout, ikey, coalesce(amo, false)
    FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::float8[],
                $6::text[], $7::bool[]) WITH ORDINALITY AS n(id, cmd, at, attempts, timeout,
                                                             ikey, amo, position)
    ORDER BY ikey COLLATE "C", position
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING task_id, idempotency_key
)
SELECT now() AS created_at, count(*) AS stored,
       coalesce(array_agg(task_id) FILTER (WHERE idempotency_key IS NOT NULL), '{}') AS keyed
FROM stored
"""

# Without idempotency keys nothing can conflict, and a large batch goes in by COPY instead:
# PostgreSQL inserts its heap rows several at a time and skips the unnest and the ON
# CONFLICT check (10,000 tasks: ~15 ms less of PostgreSQL CPU). The tasks themselves are
# the records (NewTask's fields are columns of `tasks`, in its order); created_at is left
# to its default, the transaction's now().
COPY_MIN_TASKS = 64

SELECT_BY_IDEMPOTENCY_KEYS = f"""
SELECT {TASK_COLUMNS}, idempotency_key FROM tasks WHERE idempotency_key = ANY($1::text[])
"""

SELECT_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"


class Inserted(NamedTuple):
    """One input task and whether this call created it: then `created_at` is its creation
    time; otherwise `existing` is the stored row of the task holding its idempotency key.
    (A NamedTuple: cheap to make 10,000 times for a batch.)"""

    task: NewTask
    created: bool
    created_at: datetime | None = None
    existing: Any = None

    @property
    def task_id(self) -> uuid.UUID:
        """The id of the stored task (for a known idempotency key, the existing one's)."""
        task_id: uuid.UUID = self.task.task_id if self.created else self.existing["task_id"]
        return task_id

    @property
    def row(self) -> Any:
        """The stored row (for a created task, as INSERT_TASKS stored it)."""
        if not self.created:
            return self.existing
        assert self.created_at is not None
        task = self.task
        return {
            **NEW_ROW_DEFAULTS,
            "task_id": task.task_id,
            "command": task.command,
            "scheduled_at": task.scheduled_at or self.created_at,
            "created_at": self.created_at,
            "max_attempts": task.max_attempts,
        }


# What a task row just stored by INSERT_TASKS holds besides its input and creation time
# (the column defaults; every value is also its own JSON form).
NEW_ROW_DEFAULTS: dict[str, Any] = {
    "status": Status.SCHEDULED.value,
    "picked_at": None,
    "started_at": None,
    "completed_at": None,
    "failed_at": None,
    "cancelled_at": None,
    "attempt": 0,
    "worker_id": None,
    "exit_code": None,
    "output": None,
    "error": None,
}


def _sparse(values: list[Any], default: Any = None) -> list[Any]:
    """`values`, or [] when every one is `default` (see INSERT_TASKS)."""
    return values if any(v is not default for v in values) else []


async def insert_tasks(db: Database, tasks: Sequence[NewTask]) -> list[Inserted]:
    """Store tasks in one statement (or one COPY); a known idempotency key returns the
    existing task.

    Results are in input order. Duplicate keys inside one batch map to one task.
    """
    keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
    if not keys and len(tasks) >= COPY_MIN_TASKS:
        return await db.transaction(lambda conn: _copy_tasks(conn, tasks))
    columns = (
        [t.task_id for t in tasks],
        [t.command for t in tasks],
        _sparse([t.scheduled_at for t in tasks]),
        [t.max_attempts for t in tasks],
        _sparse([t.timeout_s for t in tasks]),
        _sparse([t.idempotency_key for t in tasks]),
        _sparse([t.at_most_once for t in tasks], False),
    )

    async def work(conn: Connection) -> list[Inserted]:
        # One statement, atomic by itself: no BEGIN/COMMIT round trips. Rows skipped for a
        # known idempotency key were committed by someone else and are visible to the
        # statement that follows.
        created_at, count, keyed = await conn.fetchrow(INSERT_TASKS, *columns)
        if count != len(tasks) - len(keys) + len(keyed):  # pragma: no cover - by construction
            raise RuntimeError(f"stored {count} of {len(tasks)} tasks, {len(keyed)} keyed")
        keyed = set(keyed)
        by_key: dict[str, Any] = {}
        if len(keyed) < len(keys):
            for row in await conn.fetch(SELECT_BY_IDEMPOTENCY_KEYS, keys):
                by_key[row["idempotency_key"]] = row
        out = []
        for task in tasks:
            if task.idempotency_key is None or task.task_id in keyed:
                out.append(Inserted(task, True, created_at))
            elif task.idempotency_key in by_key:
                out.append(Inserted(task, False, existing=by_key[task.idempotency_key]))
            else:  # pragma: no cover - the insert either stored it or the key exists
                raise RuntimeError(f"task {task.task_id} was neither inserted nor found")
        return out

    return await db.run(work)


async def _copy_tasks(conn: Connection, tasks: Sequence[NewTask]) -> list[Inserted]:
    """COPY keyless tasks in the caller's transaction (see COPY_MIN_TASKS)."""
    created_at = await conn.fetchval("SELECT now()")
    records = [t if t.scheduled_at is not None else t._replace(scheduled_at=created_at)
               for t in tasks]
    await conn.copy_records_to_table("tasks", records=records, columns=NewTask._fields)
    return [Inserted(task, True, created_at) for task in tasks]


async def get_task(db: Database, task_id: uuid.UUID) -> Any:
    return await db.fetchrow(SELECT_TASK, task_id)


# ---------------------------------------------------------------------------- listing


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = f"{to_micros(created_at)}:{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        micros, task_id = base64.urlsafe_b64decode(padded).decode().split(":", 1)
        return from_micros(int(micros)), uuid.UUID(task_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise InvalidInput("after is not a cursor returned by this API (use 'next')") from None


async def list_tasks(
    db: Database,
    *,
    status: Status | None,
    limit: int,
    after: str | None,
    schedule: str | None = None,
) -> tuple[list[Any], str | None]:
    """A page of tasks, newest first, and the cursor of the next page (None at the end).

    With `schedule`, only the tasks that schedule created, with their `schedule_name` and
    `fire_at` columns.
    """
    where: list[str] = []
    args: list[Any] = []
    columns = TASK_COLUMNS
    if schedule is not None:
        args.append(schedule)
        where.append(f"schedule_name = ${len(args)}")
        columns += ", schedule_name, fire_at"
    if status is not None:
        args.append(status.value)
        where.append(f"status = ${len(args)}")
    if after is not None:
        created_at, task_id = decode_cursor(after)
        args += [created_at, task_id]
        where.append(f"(created_at, task_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    query = (
        f"SELECT {columns} FROM tasks"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY created_at DESC, task_id DESC LIMIT ${len(args)}"
    )
    rows = await db.fetch(query, *args)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["task_id"])


COUNT_BY_STATUS = "SELECT status, count(*) FROM tasks GROUP BY status"


async def count_by_status(db: Database) -> dict[str, int]:
    return {row[0]: row[1] for row in await db.fetch(COUNT_BY_STATUS)}


# ---------------------------------------------------------------------------- cancel

CANCEL_TASK = f"""
WITH old AS (SELECT task_id, status, worker_id, attempt FROM tasks WHERE task_id = $1 FOR UPDATE)
UPDATE tasks t SET status = 'cancelled', cancelled_at = clock_timestamp(),
                   lease_expires_at = NULL
FROM old
WHERE t.task_id = old.task_id AND old.status IN ('scheduled', 'picked', 'running')
RETURNING {", ".join("t." + c.strip() for c in TASK_COLUMNS.split(","))},
          CASE WHEN old.status IN ('picked', 'running') THEN old.worker_id END AS held_by,
          old.attempt AS held_attempt
"""

NOTIFY_CANCEL = "SELECT pg_notify('tm_cancel', $1)"


async def cancel_task(db: Database, task_id: uuid.UUID) -> tuple[str, Any]:
    """("cancelled", row) | ("finished", row) | ("unknown", None).

    A held task is marked cancelled at once (its worker's later reports are then stale)
    and coordinators are told over NOTIFY tm_cancel to stop it on its worker.
    """

    async def work(conn: Connection) -> tuple[str, Any]:
        row = await conn.fetchrow(CANCEL_TASK, task_id)
        if row is None:
            existing = await conn.fetchrow(SELECT_TASK, task_id)
            return ("unknown", None) if existing is None else ("finished", existing)
        if row["held_by"] is not None:
            await conn.execute(
                NOTIFY_CANCEL, f"{row['task_id']} {row['held_attempt']} {row['held_by']}"
            )
        return "cancelled", row

    return await db.transaction(work)


# ---------------------------------------------------------------------------- workers

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


# ---------------------------------------------------------------------------- dispatch

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

CLAIM = """
WITH due AS (
    SELECT task_id, scheduled_at FROM tasks
    WHERE status = 'scheduled' AND scheduled_at <= clock_timestamp()
    ORDER BY scheduled_at, task_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT task_id, row_number() OVER (ORDER BY scheduled_at, task_id) AS slot FROM due
), slots AS (
    SELECT worker_id, slot FROM unnest($1::text[]) WITH ORDINALITY AS s(worker_id, slot)
)
UPDATE tasks t
SET status = 'picked', attempt = t.attempt + 1, picked_at = clock_timestamp(),
    started_at = NULL, worker_id = slots.worker_id, coordinator_id = $3,
    lease_expires_at = clock_timestamp() + make_interval(secs => $4)
FROM numbered JOIN slots USING (slot)
WHERE t.task_id = numbered.task_id
RETURNING t.task_id, t.command, t.attempt, t.scheduled_at, t.timeout_s, t.worker_id,
          t.picked_at
"""

UNDO_PUSH = """
UPDATE tasks t SET status = 'scheduled', worker_id = NULL, picked_at = NULL,
                   lease_expires_at = NULL
FROM unnest($1::uuid[], $2::int[]) AS p(task_id, attempt)
WHERE t.task_id = p.task_id AND t.attempt = p.attempt AND t.status = 'picked'
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


# ---------------------------------------------------------------------------- reports

# kinds, as in taskmaster.proto UpdateKind
STARTED, COMPLETED, FAILED, CANCELLED, RETURNED = 1, 2, 3, 4, 5

APPLY_REPORTS = """
UPDATE tasks t SET
    status = CASE u.kind
        WHEN 1 THEN 'running'
        WHEN 2 THEN 'completed'
        WHEN 3 THEN CASE WHEN t.failures + 1 < t.max_attempts AND NOT t.at_most_once
                         THEN 'scheduled' ELSE 'failed' END
        WHEN 4 THEN 'cancelled'
        WHEN 5 THEN 'scheduled'
    END,
    -- Back to scheduled (returned, or a failure to retry): the attempt's times go; the
    -- error, exit code and output of a failure stay visible until the next attempt.
    picked_at = CASE WHEN u.kind = 5 OR (u.kind = 3 AND t.failures + 1 < t.max_attempts
                                         AND NOT t.at_most_once)
                     THEN NULL ELSE t.picked_at END,
    started_at = CASE WHEN u.kind = 5 OR (u.kind = 3 AND t.failures + 1 < t.max_attempts
                                          AND NOT t.at_most_once)
                      THEN NULL
                      ELSE coalesce(t.started_at, greatest(u.started_at, t.picked_at)) END,
    completed_at = CASE WHEN u.kind = 2 THEN greatest(u.at, t.picked_at, t.started_at,
                                                      u.started_at) END,
    failed_at = CASE WHEN u.kind = 3 AND NOT (t.failures + 1 < t.max_attempts
                                              AND NOT t.at_most_once)
                     THEN greatest(u.at, t.picked_at, t.started_at, u.started_at) END,
    cancelled_at = CASE WHEN u.kind = 4 THEN greatest(u.at, t.picked_at) ELSE t.cancelled_at END,
    scheduled_at = CASE WHEN u.kind = 3 AND t.failures + 1 < t.max_attempts
                             AND NOT t.at_most_once
                        THEN clock_timestamp() + make_interval(secs => least($9::float8,
                             $8::float8 * power(2, least(t.failures, 60))) * (0.5 + 0.5 * u.jitter))
                        ELSE t.scheduled_at END,
    failures = t.failures + (u.kind = 3)::int,
    worker_id = CASE WHEN u.kind = 5 THEN NULL ELSE t.worker_id END,
    lease_expires_at = CASE WHEN u.kind = 1 THEN t.lease_expires_at END,
    exit_code = CASE WHEN u.kind IN (2, 3) THEN u.exit_code ELSE t.exit_code END,
    output = CASE WHEN u.kind IN (2, 3) THEN u.output ELSE t.output END,
    error = CASE WHEN u.kind = 3 THEN u.error WHEN u.kind = 2 THEN NULL ELSE t.error END
FROM unnest($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::timestamptz[],
            $6::int[], $7::text[], $10::text[], $11::float8[])
     AS u(task_id, attempt, kind, at, started_at, exit_code, output, error, jitter)
WHERE t.task_id = u.task_id AND t.attempt = u.attempt
  AND t.status = ANY(CASE WHEN u.kind IN (1, 5) THEN ARRAY['picked']
                          ELSE ARRAY['picked', 'running'] END)
RETURNING t.task_id
"""


@dataclass(frozen=True, slots=True)
class Report:
    """One task update from a worker; `started_at` is carried over when merged."""

    task_id: uuid.UUID
    attempt: int
    kind: int
    at: datetime
    started_at: datetime | None = None
    exit_code: int | None = None
    output: str | None = None
    error: str | None = None
    jitter: float = 1.0


def merge_reports(reports: Sequence[Report]) -> list[Report]:
    """At most one update per task: the last one, carrying the time of a `started` before it.

    One UPDATE can change a row only once, and a batch often holds a task's `started`
    and its result together.
    """
    merged: dict[uuid.UUID, Report] = {}
    for report in reports:
        previous = merged.get(report.task_id)
        started_at = report.started_at
        if report.kind == STARTED:
            started_at = report.at
        if previous is not None and previous.attempt == report.attempt:
            started_at = started_at or previous.started_at
        elif previous is not None and previous.attempt > report.attempt:
            continue
        merged[report.task_id] = Report(
            report.task_id,
            report.attempt,
            report.kind,
            report.at,
            started_at,
            report.exit_code,
            report.output,
            report.error,
            report.jitter,
        )
    return list(merged.values())


async def apply_reports(
    db: Database, reports: Sequence[Report], *, retry_base_s: float, retry_cap_s: float
) -> tuple[int, list[uuid.UUID]]:
    """Apply a batch of worker reports in one statement: (applied count, stale task ids)."""
    merged = merge_reports(reports)
    if not merged:
        return 0, []
    rows = await db.fetch(
        APPLY_REPORTS,
        [r.task_id for r in merged],
        [r.attempt for r in merged],
        [r.kind for r in merged],
        [r.at for r in merged],
        [r.started_at for r in merged],
        [r.exit_code for r in merged],
        [r.output for r in merged],
        retry_base_s,
        retry_cap_s,
        [r.error for r in merged],
        [r.jitter for r in merged],
    )
    applied = {row["task_id"] for row in rows}
    return len(applied), [r.task_id for r in merged if r.task_id not in applied]


# ---------------------------------------------------------------------------- recovery

_RECOVER_SET = f"""
    status = CASE WHEN t.at_most_once OR t.losses + 1 >= t.max_losses
                  THEN 'failed' ELSE 'scheduled' END,
    failed_at = CASE WHEN t.at_most_once OR t.losses + 1 >= t.max_losses
                     THEN clock_timestamp() END,
    error = CASE WHEN t.at_most_once OR t.losses + 1 >= t.max_losses
                 THEN '{WORKER_LOST}' ELSE t.error END,
    picked_at = CASE WHEN t.at_most_once OR t.losses + 1 >= t.max_losses
                     THEN t.picked_at END,
    started_at = CASE WHEN t.at_most_once OR t.losses + 1 >= t.max_losses
                      THEN t.started_at END,
    losses = t.losses + 1, lease_expires_at = NULL
"""

RECOVER_WORKER_TASKS = f"""
UPDATE tasks t SET {_RECOVER_SET}
WHERE t.worker_id = $1 AND t.status IN ('picked', 'running')
RETURNING t.task_id, t.status
"""

RECOVER_EXPIRED_LEASES = f"""
UPDATE tasks t SET {_RECOVER_SET}
WHERE t.task_id IN (SELECT task_id FROM tasks
                    WHERE status IN ('picked', 'running') AND lease_expires_at < clock_timestamp()
                    LIMIT 10000 FOR UPDATE SKIP LOCKED)
RETURNING t.task_id, t.status
"""


async def recover_worker_tasks(db: Database, worker_id: str) -> list[Any]:
    """The worker is gone: its tasks go back to scheduled, or fail (at-most-once, loss cap)."""
    return await db.fetch(RECOVER_WORKER_TASKS, worker_id)


async def recover_expired_leases(db: Database) -> list[Any]:
    return await db.fetch(RECOVER_EXPIRED_LEASES)


async def forget_worker(db: Database, worker_id: str, coordinator_id: str) -> None:
    await db.execute(DELETE_WORKER, worker_id, coordinator_id)


async def forget_silent_workers(db: Database, silent_for_s: float) -> None:
    await db.execute(DELETE_SILENT_WORKERS, silent_for_s)
