"""Reports between the gRPC messages (tm.proto) and the core (tm.core.reports): the one
place the proto enum `UpdateKind` meets `ReportKind`.

The worker turns its `Report`s into `TaskUpdate`s as it sends them; the coordinator turns
what arrives back into `Report`s, refusing (one by one) the updates it cannot trust: a
malformed task id, an unknown kind, an attempt below 1. Times travel as microseconds since
the epoch; a missing or impossible one reads as "now" (the report statement never lets it
order an attempt's times backwards). PostgreSQL text cannot hold NUL, so it is dropped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from tm.core.reports import Report, ReportKind
from tm.core.timefmt import from_micros, to_micros
from tm.proto.gen.taskmaster import v1 as pb

_TO_PROTO = {
    ReportKind.STARTED: pb.UpdateKind.STARTED,
    ReportKind.COMPLETED: pb.UpdateKind.COMPLETED,
    ReportKind.FAILED: pb.UpdateKind.FAILED,
    ReportKind.CANCELLED: pb.UpdateKind.CANCELLED,
    ReportKind.RETURNED: pb.UpdateKind.RETURNED,
}
# By number: an update may carry a value this version's enum does not know.
_FROM_PROTO = {int(proto): kind for kind, proto in _TO_PROTO.items()}


class BadUpdate(ValueError):
    """A task update that cannot be applied; the message says why."""


class BadTaskId(BadUpdate):
    """A task update whose task id is not a UUID."""


def update_kind(kind: ReportKind) -> pb.UpdateKind:
    return _TO_PROTO[kind]


def report_kind(kind: pb.UpdateKind | int) -> ReportKind | None:
    """The core kind of a proto kind; None for UNSPECIFIED or a value unknown here."""
    return _FROM_PROTO.get(int(kind))


def to_update(report: Report[str]) -> pb.TaskUpdate:
    """The message for a worker's report."""
    return pb.TaskUpdate(
        task_id=report.task_id,
        attempt=report.attempt,
        kind=_TO_PROTO[report.kind],
        at_us=to_micros(report.at),
        exit_code=report.exit_code,
        output=report.output or "",
        error=report.error or "",
        started_at_us=to_micros(report.started_at) if report.started_at is not None else 0,
    )


def from_update(update: pb.TaskUpdate, *, jitter: float) -> Report[uuid.UUID]:
    """The report a worker's message stands for (BadUpdate if it cannot be trusted).

    `jitter` places a retry after this report's failure in its backoff range.
    """
    try:
        task_id = uuid.UUID(update.task_id)
    except ValueError:
        raise BadTaskId("malformed task id") from None
    kind = report_kind(update.kind)
    if kind is None:
        raise BadUpdate(f"unknown update kind {int(update.kind)}")
    if update.attempt < 1:
        raise BadUpdate("attempt must be at least 1")
    return Report(
        task_id=task_id,
        attempt=update.attempt,
        kind=kind,
        at=_time(update.at_us),
        started_at=_time(update.started_at_us) if update.started_at_us > 0 else None,
        exit_code=update.exit_code,
        output=update.output.replace("\x00", "") or None,
        error=update.error.replace("\x00", "") or None,
        jitter=jitter,
    )


def _time(micros: int) -> datetime:
    if micros <= 0:
        return datetime.now(UTC)
    try:
        return from_micros(micros)
    except (OverflowError, ValueError, OSError):
        return datetime.now(UTC)
