-- Every index a new task enters costs PostgreSQL CPU on every insert; batch ingest is bound
-- by it (measured here: one INSERT of 10,000 tasks cost ~85 ms of PostgreSQL CPU with the
-- indexes of 0001-0003, ~69 ms with these; ~41 ms by COPY, see tm/db/tasks.py).
--
-- Upgrading: the indexes are rebuilt inside the migration's transaction, so writes to
-- `tasks` wait for it; measured here at about 1.5 s per 1,000,000 tasks.

-- Listing indexes ascending. A statement's new rows share created_at = now() and have
-- ascending UUIDv7 ids, so in an ascending index they append at the right edge, where the
-- B-tree inserts without descending from the root and splits pages 90/10; in a descending
-- one each row went to the left of the previous. Newest first is a backward scan.
DROP INDEX tasks_newest;
CREATE INDEX tasks_newest ON tasks (created_at, task_id);
DROP INDEX tasks_status_newest;
CREATE INDEX tasks_status_newest ON tasks (status, created_at, task_id);
DROP INDEX tasks_schedule_newest;
CREATE INDEX tasks_schedule_newest ON tasks (schedule_name, created_at, task_id)
    WHERE schedule_name IS NOT NULL;

-- Most tasks have no idempotency key: index only those that do (ON CONFLICT names the
-- predicate to use it).
ALTER TABLE tasks DROP CONSTRAINT tasks_idempotency_key_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The dashboard's backlog finds tasks still scheduled through tasks_scheduled_due; this
-- index only needs the ones that left the backlog (a new task used to enter it at
-- 'infinity').
DROP INDEX tasks_left_backlog_at;
CREATE INDEX tasks_left_backlog_at ON tasks
    ((coalesce(least(picked_at, started_at, completed_at, failed_at, cancelled_at),
               'infinity'::timestamptz)))
    WHERE status <> 'scheduled';

-- The rows one transaction stores share their creation time (the INSERT of a batch set it
-- to now() already; a COPY of a batch leaves it to this default).
ALTER TABLE tasks ALTER COLUMN created_at SET DEFAULT now();
