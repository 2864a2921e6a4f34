"""Queries of the web dashboard (tm.scheduler.ui): per-minute series for the overview.

Each series is one statement: a `generate_series` of minute buckets (the last `minutes`
minutes, the current one included) left-joined to the tasks, so minutes without tasks
are present with a count of 0. Neither has an index to use (finished tasks are not
indexed by time): each is one sequential scan of `tasks`, which is why the dashboard
refreshes its charts every few seconds rather than on every poll of the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tm.aio.pg import Database

# Completed and failed tasks per minute, by the minute they finished in.
FINISHED_PER_MINUTE = """
WITH span AS (
    SELECT date_trunc('minute', clock_timestamp()) - make_interval(mins => $1 - 1) AS first,
           date_trunc('minute', clock_timestamp()) AS last
), finished AS (
    SELECT date_trunc('minute', coalesce(t.completed_at, t.failed_at)) AS minute,
           count(*) FILTER (WHERE t.status = 'completed') AS completed,
           count(*) FILTER (WHERE t.status = 'failed') AS failed
    FROM tasks t, span
    WHERE t.status IN ('completed', 'failed')
      AND coalesce(t.completed_at, t.failed_at) >= span.first
    GROUP BY 1
)
SELECT m.minute, coalesce(f.completed, 0) AS completed, coalesce(f.failed, 0) AS failed
FROM span
CROSS JOIN LATERAL generate_series(span.first, span.last, interval '1 minute') AS m(minute)
LEFT JOIN finished f ON f.minute = m.minute
ORDER BY m.minute
"""

# Tasks that were due but not yet handed to a worker (nor cancelled) at the end of each
# minute (at "now" for the current one). A task left the backlog at the first of its
# picked/started/finished/cancelled times; a retried task's earlier attempts are not
# remembered, so a retry counts from its latest pick.
DUE_BACKLOG = """
WITH span AS (
    SELECT clock_timestamp() AS now,
           date_trunc('minute', clock_timestamp()) - make_interval(mins => $1 - 1) AS first,
           date_trunc('minute', clock_timestamp()) AS last
), samples AS (
    SELECT m.minute, least(m.minute + interval '1 minute', span.now) AS at
    FROM span
    CROSS JOIN LATERAL generate_series(span.first, span.last, interval '1 minute') AS m(minute)
), left_backlog AS (
    SELECT t.scheduled_at,
           coalesce(least(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                          t.cancelled_at), 'infinity') AS left_at
    FROM tasks t, span
    -- tasks still scheduled, through tasks_scheduled_due
    WHERE t.status = 'scheduled' AND t.scheduled_at <= span.now
    UNION ALL
    -- tasks that left, through the partial tasks_left_backlog_at
    SELECT t.scheduled_at,
           coalesce(least(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                          t.cancelled_at), 'infinity')
    FROM tasks t, span
    WHERE t.status <> 'scheduled' AND t.scheduled_at <= span.now
      AND coalesce(least(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                         t.cancelled_at), 'infinity') > span.first
), candidates AS (
    SELECT l.scheduled_at, l.left_at FROM left_backlog l, span WHERE l.left_at > span.first
)
SELECT s.minute, count(c.scheduled_at) AS backlog
FROM samples s
LEFT JOIN candidates c ON c.scheduled_at <= s.at AND c.left_at > s.at
GROUP BY s.minute
ORDER BY s.minute
"""


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: datetime
    count: int
    failed: int = 0


async def finished_per_minute(db: Database, minutes: int) -> list[MinuteCount]:
    """`minutes` buckets, oldest first: completed (count) and failed tasks per minute."""
    rows = await db.fetch(FINISHED_PER_MINUTE, minutes)
    return [MinuteCount(r["minute"], int(r["completed"]), int(r["failed"])) for r in rows]


async def due_backlog(db: Database, minutes: int) -> list[MinuteCount]:
    """`minutes` buckets, oldest first: due but undispatched tasks at each minute's end."""
    rows = await db.fetch(DUE_BACKLOG, minutes)
    return [MinuteCount(r["minute"], int(r["backlog"])) for r in rows]
