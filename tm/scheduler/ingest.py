"""Group commit: concurrent task inserts share one multi-row INSERT (or COPY).

One INSERT per request caps ingest near the commit rate (~800 req/s on a 2-core machine);
one INSERT for everything that arrived while the previous ones were committing does not. No
timer is involved: under light load a request is flushed at once, under heavy load batches
grow by themselves. Every request is answered only after the statement holding its rows
has committed, so no acknowledged task can be lost.

Two groups are written at once (`flushes`): while one waits for PostgreSQL, the next is
sent. With a single writer a scheduler process serving several 10,000-task batches sat
idle a fifth of the time, its one statement in flight (batch ingest, one process, 4
clients: 107,000 -> 124,000 tasks/s).

If a grouped statement fails for a reason other than the database being unreachable, each
request of the group is retried on its own, so one request can never fail another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
import trio

from tm import metrics
from tm.aio.pg import Database, DatabaseUnavailable
from tm.core.tasks import NewTask
from tm.db import tasks as db_tasks

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Pending:
    tasks: Sequence[NewTask]
    done: trio.Event = field(default_factory=trio.Event)
    result: list[db_tasks.Inserted] | None = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self, db: Database, *, max_rows: int = 10_000, flushes: int = 2) -> None:
        self._db = db
        self._max_rows = max_rows
        self._flushes = flushes
        self._send, self._receive = trio.open_memory_channel[_Pending](10_000)
        self.groups = 0
        self.rows = 0

    def __repr__(self) -> str:
        mean = self.rows / self.groups if self.groups else 0.0
        return f"<GroupCommit [{self.groups} groups, {mean:.1f} rows per group]>"

    async def insert(self, tasks: Sequence[NewTask]) -> list[db_tasks.Inserted]:
        """Store `tasks` (in one group with whatever else is waiting); results in order."""
        pending = _Pending(tasks)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self) -> None:
        """Flush groups until cancelled. Start it in the nursery that outlives requests.

        A group holds whole requests and at most `max_rows` rows, unless one request alone
        is bigger; the request that would overflow a group starts the next one. Up to
        `flushes` groups are written at once, each on its own connection.
        """
        # A free writer is taken before the group is formed: requests that arrive while
        # every writer is busy join the group that is written next.
        writers = trio.Semaphore(self._flushes)
        async with trio.open_nursery() as nursery:
            carried: _Pending | None = None
            while True:
                await writers.acquire()
                first = carried if carried is not None else await self._receive.receive()
                carried = None
                group = [first]
                rows = len(first.tasks)
                while rows < self._max_rows:
                    try:
                        more = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if rows + len(more.tasks) > self._max_rows:
                        carried = more
                        break
                    group.append(more)
                    rows += len(more.tasks)
                nursery.start_soon(self._flush_then_release, group, writers)

    async def _flush_then_release(self, group: list[_Pending], writers: trio.Semaphore) -> None:
        try:
            await self._flush(group)
        finally:
            writers.release()

    async def _flush(self, group: list[_Pending]) -> None:
        tasks = [task for pending in group for task in pending.tasks]
        try:
            results = await db_tasks.insert_tasks(self._db, tasks)
        except DatabaseUnavailable as exc:
            for pending in group:
                pending.error = exc
                pending.done.set()
            return
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                group[0].done.set()
                return
            log.warning("group insert failed; inserting one by one", action="ingest_split",
                        requests=len(group))
            for pending in group:
                await self._flush([pending])
            return
        metrics.INGEST_GROUP_SIZE.observe(len(tasks))
        self.groups += 1
        self.rows += len(tasks)
        offset = 0
        for pending in group:
            pending.result = results[offset : offset + len(pending.tasks)]
            offset += len(pending.tasks)
            pending.done.set()

