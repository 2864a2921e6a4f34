"""Task rows as the API stores and reads them: ingest, one task, listings, counts, cancel.

Ingest is one statement per batch (or one COPY), whatever its size; a listing is one
keyset-paginated statement over an index on (created_at, task_id) or
(status, created_at, task_id). A cancel is the client's transition (tm.core.lifecycle
Action.CANCEL): a held task is marked cancelled at once, so its worker's later reports are
stale, and coordinators are told over NOTIFY to stop it (tm/db/notify.py).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from tm.aio.pg import Connection, Database
from tm.core.lifecycle import Action
from tm.core.tasks import HELD, InvalidInput, NewTask, Status
from tm.core.timefmt import from_micros, to_micros
from tm.db import notify
from tm.db.transitions import accepts, status_in, target

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
UPDATE tasks t SET status = {target(Action.CANCEL)}, cancelled_at = clock_timestamp(),
                   lease_expires_at = NULL
FROM old
WHERE t.task_id = old.task_id AND {accepts(Action.CANCEL, "old.status")}
RETURNING {", ".join("t." + c.strip() for c in TASK_COLUMNS.split(","))},
          CASE WHEN {status_in("old.status", HELD)} THEN old.worker_id END AS held_by,
          old.attempt AS held_attempt
"""

NOTIFY_CANCEL = notify.notify_statement(notify.CANCEL)


async def cancel_task(db: Database, task_id: uuid.UUID) -> tuple[str, Any]:
    """("cancelled", row) | ("finished", row) | ("unknown", None).

    A held task is marked cancelled at once (its worker's later reports are then stale)
    and coordinators are told over NOTIFY (a notify.CancelNotice) to stop it on its worker.
    """

    async def work(conn: Connection) -> tuple[str, Any]:
        row = await conn.fetchrow(CANCEL_TASK, task_id)
        if row is None:
            existing = await conn.fetchrow(SELECT_TASK, task_id)
            return ("unknown", None) if existing is None else ("finished", existing)
        if row["held_by"] is not None:
            notice = notify.CancelNotice(row["task_id"], row["held_attempt"], row["held_by"])
            await conn.execute(NOTIFY_CANCEL, notice.encode())
        return "cancelled", row

    return await db.transaction(work)

