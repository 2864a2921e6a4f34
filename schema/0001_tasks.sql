-- Tasks and the workers that run them.
--
-- `worker_id` is the worker of the latest attempt: its holder while picked or running.
-- `attempt` counts dispatches and fences every report from a worker; `failures` counts
-- execution failures (bounded by max_attempts) and `losses` counts workers lost while
-- holding the task (bounded by max_losses). `lease_expires_at` is renewed by the owning
-- worker's heartbeats; an expired lease frees the task even if its coordinator is gone.

CREATE TABLE tasks (
    task_id          uuid        PRIMARY KEY,
    command          text        NOT NULL CHECK (command <> ''),
    status           text        NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'picked', 'running',
                                       'completed', 'failed', 'cancelled')),
    scheduled_at     timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    picked_at        timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    failed_at        timestamptz,
    cancelled_at     timestamptz,
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer     NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    failures         integer     NOT NULL DEFAULT 0,
    losses           integer     NOT NULL DEFAULT 0,
    max_losses       integer     NOT NULL DEFAULT 3 CHECK (max_losses >= 1),
    timeout_s        double precision CHECK (timeout_s > 0),
    at_most_once     boolean     NOT NULL DEFAULT false,
    idempotency_key  text        UNIQUE,
    worker_id        text,
    coordinator_id   text,
    lease_expires_at timestamptz,
    exit_code        integer,
    output           text,
    error            text,
    -- A held task always names its holder; a finished one keeps the worker that ran it.
    CHECK (status NOT IN ('picked', 'running') OR worker_id IS NOT NULL)
);

-- The claim path: only due-or-future scheduled tasks, so finished history never slows it.
CREATE INDEX tasks_scheduled_due ON tasks (scheduled_at, task_id) WHERE status = 'scheduled';
-- Tasks held by workers: lease renewal, lost-worker recovery, lease reaping.
CREATE INDEX tasks_held_by_worker ON tasks (worker_id) WHERE status IN ('picked', 'running');
CREATE INDEX tasks_held_lease ON tasks (lease_expires_at) WHERE status IN ('picked', 'running');
-- Listing, newest first, optionally by status (keyset pagination on (created_at, task_id)).
CREATE INDEX tasks_newest ON tasks (created_at DESC, task_id DESC);
CREATE INDEX tasks_status_newest ON tasks (status, created_at DESC, task_id DESC);

CREATE TABLE workers (
    worker_id         text        PRIMARY KEY,
    address           text        NOT NULL,
    state             text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining')),
    capacity          integer     NOT NULL,
    free_slots        integer     NOT NULL,
    coordinator_id    text        NOT NULL,
    registered_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Wake coordinators when a task becomes due sooner than they planned (LISTEN tm_due).
CREATE FUNCTION tm_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tm_due', to_char(min(scheduled_at) AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    FROM new_rows WHERE status = 'scheduled' HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_notify_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tm_notify_due();
CREATE TRIGGER tasks_notify_update AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tm_notify_due();
