-- The dashboard's charts look at the last minutes only; without these indexes they would
-- scan the whole (mostly finished) tasks table on every refresh.

-- Finished per minute (tm/db/dashboard.py FINISHED_PER_MINUTE).
CREATE INDEX tasks_finished_at ON tasks ((coalesce(completed_at, failed_at)))
    WHERE status IN ('completed', 'failed');

-- Due backlog (DUE_BACKLOG): when each task left the backlog, 'infinity' while it has not.
CREATE INDEX tasks_left_backlog_at ON tasks
    ((coalesce(least(picked_at, started_at, completed_at, failed_at, cancelled_at),
               'infinity'::timestamptz)));
