"""Worker reports applied in bulk: one statement per batch, whatever its size.

The transitions are tm.core.lifecycle's, for the report kinds (tm.core.reports.ReportKind):
the status `CASE`, the statuses each kind fits and the retry budget come from
tm/db/transitions.py; the times and results recorded beside them are written here.
Reports are fenced by `(task_id, attempt)` and by the status their kind fits, so a late,
duplicated or foreign report changes nothing and comes back as stale.

A failure to retry is rescheduled after `tm.core.backoff.exponential(failures, ...)`: the
statement receives the delay schedule and each report's spread (computed in Python), picks
the entry for the row's failure count, and adds it to the database's clock at the moment
of the report — the clock every due time is compared with.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from tm.aio.pg import Database
from tm.core import backoff
from tm.core.lifecycle import RETRIES, TRANSITIONS
from tm.core.reports import RESULTS, Report, ReportKind, collapse
from tm.core.tasks import HELD, Status
from tm.db.transitions import ByKind

K = ReportKind
BY_KIND = ByKind("u.kind", "t")
# The kinds whose failure is retried after a delay (FAILED), when they are.
RETRIED = ByKind("u.kind", "t", [k for k in K if TRANSITIONS[k].budget is RETRIES]).ends_in(
    Status.SCHEDULED
)
REQUEUED = BY_KIND.ends_in(Status.SCHEDULED)
# Times of a finished attempt are never before those already recorded (a worker's clock
# may be behind the database's).
FINISHED_AT = "greatest(u.at, t.picked_at, t.started_at, u.started_at)"

APPLY_REPORTS = f"""
UPDATE tasks t SET
    status = {BY_KIND.status()},
    -- Back to scheduled (returned, or a failure to retry): the attempt's times go; the
    -- error, exit code and output of a failure stay visible until the next attempt.
    picked_at = CASE WHEN {REQUEUED} THEN NULL ELSE t.picked_at END,
    started_at = CASE WHEN {REQUEUED} THEN NULL
                      ELSE coalesce(t.started_at, greatest(u.started_at, t.picked_at)) END,
    completed_at = CASE WHEN {BY_KIND.ends_in(Status.COMPLETED)} THEN {FINISHED_AT} END,
    failed_at = CASE WHEN {BY_KIND.ends_in(Status.FAILED)} THEN {FINISHED_AT} END,
    cancelled_at = CASE WHEN {BY_KIND.ends_in(Status.CANCELLED)} THEN greatest(u.at, t.picked_at)
                        ELSE t.cancelled_at END,
    -- $8 is tm.core.backoff.schedule: its entry for the row's failures, capped at the last.
    scheduled_at = CASE WHEN {RETRIED}
                        THEN clock_timestamp() + make_interval(secs => ($8::float8[])[
                             least(t.failures + 1, cardinality($8::float8[]))] * u.spread)
                        ELSE t.scheduled_at END,
    failures = {BY_KIND.spend(RETRIES)},
    -- Handed back unstarted: as if never picked. Otherwise the attempt's worker stays named.
    worker_id = CASE WHEN {BY_KIND.is_(K.RETURNED)} THEN NULL ELSE t.worker_id END,
    lease_expires_at = CASE WHEN {BY_KIND.ends_in(*HELD)} THEN t.lease_expires_at END,
    exit_code = CASE WHEN {BY_KIND.is_(*RESULTS)} THEN u.exit_code ELSE t.exit_code END,
    output = CASE WHEN {BY_KIND.is_(*RESULTS)} THEN u.output ELSE t.output END,
    error = CASE WHEN {BY_KIND.is_(K.FAILED)} THEN u.error
                 WHEN {BY_KIND.is_(K.COMPLETED)} THEN NULL ELSE t.error END
FROM unnest($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::timestamptz[],
            $6::int[], $7::text[], $9::text[], $10::float8[])
     AS u(task_id, attempt, kind, at, started_at, exit_code, output, error, spread)
WHERE t.task_id = u.task_id AND t.attempt = u.attempt AND {BY_KIND.fits()}
RETURNING t.task_id
"""


async def apply_reports(
    db: Database,
    reports: Sequence[Report[uuid.UUID]],
    *,
    retry_base_s: float,
    retry_cap_s: float,
) -> tuple[int, list[uuid.UUID]]:
    """Apply a batch of worker reports in one statement: (applied count, stale task ids).

    The batch is collapsed first (tm.core.reports.collapse): one UPDATE changes a row once.
    """
    merged = collapse(reports)
    if not merged:
        return 0, []
    rows = await db.fetch(
        APPLY_REPORTS,
        [r.task_id for r in merged],
        [r.attempt for r in merged],
        [r.kind for r in merged],
        [r.at for r in merged],
        [r.start_time for r in merged],
        [r.exit_code for r in merged],
        [r.output for r in merged],
        backoff.schedule(base=retry_base_s, cap=retry_cap_s),
        [r.error for r in merged],
        [backoff.spread(r.jitter) for r in merged],
    )
    applied = {row["task_id"] for row in rows}
    return len(applied), [r.task_id for r in merged if r.task_id not in applied]
