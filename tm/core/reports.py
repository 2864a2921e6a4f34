"""What a worker reports about a task, and the one rule that folds two reports into one.

A worker reports each attempt's `started` and then its result (completed, failed,
cancelled), or hands a task it never started back (returned). Two places fold the reports
of one task together, both with `merge`:

* the worker, when a result is ready while the attempt's `started` is still unsent: the
  result stands in for it, carrying its time, so a fast task costs one update, not two;
* the database module, for a batch (`collapse`): one UPDATE can change a row only once,
  and a batch often holds a task's `started` and its result together.

Invariants: a report of an earlier attempt never replaces one of a later attempt (it would
be stale anyway, and must not hide the later one); within one attempt the later report
wins and keeps the attempt's start time, so `started_at` is never lost by merging.

`ReportKind` is the one spelling of a report's kind: its integers are what the report
statement receives (tm/db/reports.py), and tm/wire.py maps it to and from the proto enum.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from datetime import datetime
from enum import IntEnum
from typing import Generic, NamedTuple, TypeVar


class ReportKind(IntEnum):
    STARTED = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4
    RETURNED = 5  # handed back unstarted (draining): dispatch it again


# The reports that record an execution's exit code and output.
RESULTS = frozenset({ReportKind.COMPLETED, ReportKind.FAILED})

# The worker names tasks by the ids of its pushes (str); the database by uuid.UUID.
TaskKey = TypeVar("TaskKey", bound=Hashable)


class Report(NamedTuple, Generic[TaskKey]):
    """One task update from a worker, fenced by `(task_id, attempt)`. (A NamedTuple: the
    worker makes one per update and the coordinator one per update received.)"""

    task_id: TaskKey
    attempt: int
    kind: ReportKind
    at: datetime
    # When a result stands in for its attempt's unsent `started`: when the attempt started.
    started_at: datetime | None = None
    exit_code: int | None = None
    output: str | None = None
    error: str | None = None
    # Where in its backoff range a retry after this failure falls, in [0, 1]
    # (tm.core.backoff.spread); drawn by the coordinator, not the worker.
    jitter: float = 1.0

    @property
    def start_time(self) -> datetime | None:
        """When the attempt started, if this report says."""
        return self.at if self.kind is ReportKind.STARTED else self.started_at


def merge(earlier: Report[TaskKey], later: Report[TaskKey]) -> Report[TaskKey]:
    """The one report that stands for `earlier` followed by `later`, of the same task.

    The later attempt's report; for one attempt, the later report, carrying the start
    time `earlier` knew of when `later` knows none.
    """
    if later.attempt < earlier.attempt:
        return earlier
    if later.attempt > earlier.attempt or later.start_time is not None:
        return later
    started_at = earlier.start_time
    return later if started_at is None else later._replace(started_at=started_at)


def collapse(reports: Iterable[Report[TaskKey]]) -> list[Report[TaskKey]]:
    """At most one report per task, in the order the tasks first appear: each task's
    reports merged in order."""
    merged: dict[TaskKey, Report[TaskKey]] = {}
    for report in reports:
        earlier = merged.get(report.task_id)
        merged[report.task_id] = report if earlier is None else merge(earlier, report)
    return list(merged.values())
