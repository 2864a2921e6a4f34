"""`serve_recurring`: turns due occurrences of recurring schedules into tasks.

    serve_recurring            (one per coordinator, in serve_coordinator's nursery)
    ├── changes      LISTEN tm_schedules: a schedule was created, edited or deleted
    └── materializer sleeps until the earliest next_fire_at (by the database's clock), a
                     change, or the backstop scan; then one round of
                     tm.db.schedules.materialize_due

Any number of coordinators run this at once: SKIP LOCKED shares the schedules out, and the
unique index on (schedule_name, fire_at) makes an occurrence created twice a no-op, so
neither a restart nor a retry after a lost commit can run an occurrence twice. A task is
created at (not before) its fire time and gets it as scheduled_at, so the dispatcher
starts it at once and never early. The database being down pauses the rounds (retried with
backoff); what fell due meanwhile is then decided by each schedule's `catch_up`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NoReturn

import structlog
import trio

from tm import metrics
from tm.aio.pg import Database, DatabaseUnavailable
from tm.coordinator.rounds import Waker, run_rounds
from tm.core.timefmt import format_time
from tm.db import notify
from tm.db import schedules as db_schedules
from tm.retry import Backoff, retry_forever
from tm.settings import CoordinatorSettings

log = structlog.get_logger(__name__)

# Another coordinator holds the due schedules (SKIP LOCKED): look again after this long.
BUSY_WAIT_S = 0.05


class Recurring:
    """The materializer of one coordinator."""

    def __init__(self, settings: CoordinatorSettings, db: Database, coordinator_id: str):
        self.settings = settings
        self.db = db
        self.coordinator_id = coordinator_id
        self.log = log.bind(coordinator_id=coordinator_id)
        self._waker = Waker()
        self._listen_backoff = Backoff(base=0.2, cap=5.0)
        self.rounds = 0

    def __repr__(self) -> str:
        return f"<Recurring {self.coordinator_id} rounds={self.rounds}>"

    def wake(self) -> None:
        self._waker.wake()

    async def materialize_forever(self) -> NoReturn:
        await run_rounds(self._round, self._waker, log=self.log,
                         paused="recurring schedules paused", action="schedules_retry")

    async def _round(self) -> float:
        """One round; returns how long to sleep before the next (0: at once)."""
        self.rounds += 1
        result = await db_schedules.materialize_due(
            self.db, grace=timedelta(seconds=self.settings.schedule_grace_s)
        )
        for decided in result.decided:
            self._log(decided, result.now)
        if result.more:
            return 0.0
        due_in = await db_schedules.seconds_until_next_fire(self.db)
        if due_in is None:
            return self.settings.scan_interval_s
        if due_in <= 0:
            # Still due: either we advanced nothing (another coordinator holds it) or we
            # did and it is due again; in the first case do not spin.
            return 0.0 if result.decided else BUSY_WAIT_S
        return min(self.settings.scan_interval_s, due_in)

    def _log(self, decided: db_schedules.Decided, now: datetime | None) -> None:
        plan = decided.plan
        if decided.error is not None:
            self.log.error("schedule cannot be evaluated; stopped until edited",
                           action="schedule_invalid", schedule=decided.name,
                           error=decided.error)
            return
        for task_id, fire_at in decided.created:
            if now is not None:
                metrics.SCHEDULE_LATENESS.observe(max(0.0, (now - fire_at).total_seconds()))
            self.log.info("schedule fired", action="schedule_fired", schedule=decided.name,
                          fire_at=format_time(fire_at), task_id=str(task_id))
        metrics.SCHEDULE_OCCURRENCES.labels("created").inc(len(decided.created))
        if len(decided.created) < len(plan.run):
            self.log.warning("occurrence already created elsewhere",
                             action="schedule_duplicate", schedule=decided.name,
                             count=len(plan.run) - len(decided.created))
        if plan.skipped:
            metrics.SCHEDULE_OCCURRENCES.labels("skipped").inc(plan.skipped)
            self.log.info("occurrences skipped: previous run unfinished",
                          action="schedule_skipped", schedule=decided.name, count=plan.skipped)
        if plan.missed:
            metrics.SCHEDULE_OCCURRENCES.labels("missed").inc(plan.missed)
            self.log.warning("occurrences missed while no coordinator ran",
                             action="schedule_missed", schedule=decided.name,
                             count=plan.missed)

    async def follow_changes(self) -> NoReturn:
        """LISTEN tm_schedules and wake the materializer on each change; reconnects."""
        await retry_forever(
            self._follow, retry_on=DatabaseUnavailable, backoff=self._listen_backoff,
            log=self.log, event="not listening for schedule changes",
            action="schedules_listen_retry",
        )

    async def _follow(self) -> NoReturn:
        async with self.db.listen(notify.SCHEDULES) as changes:
            self._listen_backoff.reset()
            self.wake()  # anything changed while not listening
            async for _name in changes:
                self.wake()
        raise DatabaseUnavailable("schedule notification connection lost")


async def serve_recurring(
    settings: CoordinatorSettings, db: Database, coordinator_id: str
) -> None:
    """Materialize recurring schedules until cancelled."""
    recurring = Recurring(settings, db, coordinator_id)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recurring.follow_changes)
        nursery.start_soon(recurring.materialize_forever)
