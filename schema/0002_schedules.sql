-- Recurring schedules, and the tasks they create.
--
-- A schedule's occurrences become ordinary tasks. A task created by a schedule carries
-- `schedule_name` and `fire_at` (its occurrence; also its scheduled_at), and the pair is
-- unique: however many coordinators run, restart or retry, an occurrence is created at most
-- once. Deleting a schedule keeps its tasks (no foreign key).
--
-- `next_fire_at` is the first occurrence not yet decided (created, skipped or missed);
-- NULL while paused, or when the expression never fires again. Coordinators take due
-- schedules with FOR UPDATE SKIP LOCKED and advance next_fire_at in the transaction that
-- creates the tasks.

CREATE TABLE schedules (
    name          text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'),
    cron          text        NOT NULL CHECK (cron <> ''),
    timezone      text        NOT NULL DEFAULT 'UTC',
    command       text        NOT NULL CHECK (command <> ''),
    max_attempts  integer     NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    timeout_s     double precision CHECK (timeout_s > 0),
    at_most_once  boolean     NOT NULL DEFAULT false,
    overlap       text        NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip')),
    catch_up      text        NOT NULL DEFAULT 'latest'
                  CHECK (catch_up IN ('none', 'latest', 'all')),
    paused        boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    next_fire_at  timestamptz,
    last_fire_at  timestamptz,
    -- occurrences not run because the previous run was unfinished (overlap = 'skip')
    skipped_runs  bigint      NOT NULL DEFAULT 0,
    -- occurrences dropped after an outage (catch_up 'none' or 'latest')
    missed_runs   bigint      NOT NULL DEFAULT 0,
    CHECK (NOT paused OR next_fire_at IS NULL)
);

-- What coordinators wait for: the earliest next occurrence of an active schedule.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;

ALTER TABLE tasks ADD COLUMN schedule_name text, ADD COLUMN fire_at timestamptz,
    ADD CHECK ((schedule_name IS NULL) = (fire_at IS NULL));

-- The identity of an occurrence. Partial, so that ordinary tasks cost it nothing.
CREATE UNIQUE INDEX tasks_schedule_occurrence ON tasks (schedule_name, fire_at)
    WHERE schedule_name IS NOT NULL;
-- A schedule's runs, newest first (GET /schedules/<name>/runs).
CREATE INDEX tasks_schedule_newest ON tasks (schedule_name, created_at DESC, task_id DESC)
    WHERE schedule_name IS NOT NULL;
-- overlap = 'skip': does the schedule have an unfinished run?
CREATE INDEX tasks_schedule_unfinished ON tasks (schedule_name)
    WHERE schedule_name IS NOT NULL AND status IN ('scheduled', 'picked', 'running');
