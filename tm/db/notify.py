"""The NOTIFY channels the services talk over, and what their payloads say.

    DUE        tm_due        sent by the trigger of schema/0001_tasks.sql when a statement
                             leaves tasks scheduled: the earliest of their due times
                             (RFC 3339). Coordinators wake their dispatcher; the payload is
                             informational.
    CANCEL     tm_cancel     sent by tasks.cancel_task when it cancels a held task: a
                             `CancelNotice`. Coordinators stop it on the worker, if it is theirs.
    SCHEDULES  tm_schedules  sent by tm/db/schedules.py when a schedule is created, edited
                             or deleted: its name. Coordinators wake their materializer.

A notification is a hint, never the only way a change is found (the dispatcher also scans,
a cancelled task's late reports are stale anyway, the materializer also polls): a listener
that was disconnected just looks again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

DUE = "tm_due"
CANCEL = "tm_cancel"
SCHEDULES = "tm_schedules"


def notify_statement(channel: str) -> str:
    """The statement that sends `$1` on `channel` (at commit, like every NOTIFY)."""
    return f"SELECT pg_notify('{channel}', $1)"


@dataclass(frozen=True, slots=True)
class CancelNotice:
    """Stop `attempt` of `task_id` on `worker_id` (payload: `<task id> <attempt> <worker id>`;
    the worker id goes last, since it may hold spaces)."""

    task_id: uuid.UUID
    attempt: int
    worker_id: str

    def encode(self) -> str:
        return f"{self.task_id} {self.attempt} {self.worker_id}"

    @classmethod
    def decode(cls, payload: str) -> CancelNotice:
        """The notice `encode` wrote; ValueError for anything else."""
        parts = payload.split(" ", 2)
        if len(parts) != 3 or not parts[2]:
            raise ValueError(f"not a cancel notice: {payload[:100]!r}")
        task_id, attempt, worker_id = parts
        return cls(uuid.UUID(task_id), int(attempt), worker_id)
