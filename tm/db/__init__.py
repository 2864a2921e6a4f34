"""PostgreSQL: every statement the services run, by concern, and the migration runner.

    tasks        ingest (one statement or one COPY per batch), one task, listings, counts,
                 cancel — what the HTTP API stores and reads
    dispatch     the next due time, the claim (one statement, SKIP LOCKED), hand-backs
    reports      worker reports applied in bulk, one statement per batch
    recovery     lost workers' and expired leases' tasks requeued or failed
    workers      heartbeats (worker rows and lease renewals), listings, forgetting
    schedules    recurring schedules and the materialization of their occurrences
    dashboard    the web dashboard's per-minute series
    transitions  tm.core.lifecycle's transition table rendered as SQL, for the statements
                 that move tasks between statuses (dispatch, reports, recovery, cancel)
    notify       the NOTIFY channels and their payloads
    migrate      applies schema/NNNN_name.sql under an advisory lock

Statements are module constants beside the function that runs them, not `.sql` files: the
ones that move a task are built from the lifecycle table at import, and each carries the
comment that explains its plan next to its text. Statements are written for batches
(arrays in, `unnest` inside, one round trip per batch) and compare times by the database's
clock only.
"""
