"""tm.wire and tm.db.notify: what crosses a process boundary, both ways.

A worker's report survives the trip to the coordinator (every kind, every field); what the
coordinator cannot trust is refused one update at a time; a cancel notice reads back as
written, whatever its worker id holds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tm import wire
from tm.core.reports import Report, ReportKind
from tm.db.notify import CancelNotice
from tm.proto.gen.taskmaster import v1 as pb

FAST = settings(max_examples=200, deadline=None, database=None)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
times = st.integers(1, 10**17).map(lambda us: EPOCH + timedelta(microseconds=us))


def test_every_kind_maps_once_each_way() -> None:
    proto = [k for k in pb.UpdateKind if k is not pb.UpdateKind.UNSPECIFIED]
    assert sorted(wire.update_kind(k) for k in ReportKind) == sorted(proto)
    for kind in ReportKind:
        assert wire.report_kind(wire.update_kind(kind)) is kind
        assert wire.update_kind(kind).name == kind.name
    assert wire.report_kind(pb.UpdateKind.UNSPECIFIED) is None
    assert wire.report_kind(99) is None


@FAST
@given(
    st.sampled_from(ReportKind),
    st.integers(1, 2**31),
    times,
    st.one_of(st.none(), times),
    st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    st.one_of(st.none(), st.text(max_size=20).filter(lambda s: s and "\x00" not in s)),
    st.one_of(st.none(), st.text(max_size=20).filter(lambda s: s and "\x00" not in s)),
    st.floats(0, 1),
)
def test_a_report_survives_the_trip(
    kind: ReportKind,
    attempt: int,
    at: datetime,
    started_at: datetime | None,
    exit_code: int | None,
    output: str | None,
    error: str | None,
    jitter: float,
) -> None:
    task_id = uuid.uuid4()
    sent = Report(str(task_id), attempt, kind, at, started_at, exit_code, output, error)
    update = pb.TaskUpdate.parse(bytes(wire.to_update(sent)))  # as it goes over the wire
    got = wire.from_update(update, jitter=jitter)
    assert got == Report(task_id, attempt, kind, at, started_at, exit_code, output, error,
                         jitter=jitter)


@pytest.mark.parametrize(
    ("update", "why"),
    [
        (pb.TaskUpdate(task_id="not-a-uuid", attempt=1, kind=pb.UpdateKind.COMPLETED), "id"),
        (pb.TaskUpdate(task_id=str(uuid.uuid4()), attempt=0, kind=pb.UpdateKind.FAILED),
         "attempt"),
        (pb.TaskUpdate(task_id=str(uuid.uuid4()), attempt=1, kind=pb.UpdateKind.UNSPECIFIED),
         "kind"),
    ],
)
def test_updates_that_cannot_be_trusted_are_refused(update: pb.TaskUpdate, why: str) -> None:
    with pytest.raises(wire.BadUpdate, match=why):
        wire.from_update(update, jitter=0.5)


def test_nul_is_dropped_and_a_missing_time_reads_as_now() -> None:
    before = datetime.now(UTC)
    got = wire.from_update(
        pb.TaskUpdate(task_id=str(uuid.uuid4()), attempt=2, kind=pb.UpdateKind.FAILED,
                      output="a\x00b", error="\x00"),
        jitter=0.1,
    )
    assert got.output == "ab"
    assert got.error is None  # nothing left: no error text
    assert before <= got.at <= datetime.now(UTC)
    assert got.started_at is None


@FAST
@given(st.uuids(), st.integers(0, 2**31), st.text(min_size=1, max_size=200))
def test_cancel_notices_read_back_as_written(
    task_id: uuid.UUID, attempt: int, worker_id: str
) -> None:
    notice = CancelNotice(task_id, attempt, worker_id)
    assert CancelNotice.decode(notice.encode()) == notice


@pytest.mark.parametrize("payload", ["", "x", f"{uuid.uuid4()} 1", f"{uuid.uuid4()} x w",
                                     "nope 1 w", f"{uuid.uuid4()} 1 "])
def test_malformed_cancel_notices_are_refused(payload: str) -> None:
    with pytest.raises(ValueError):
        CancelNotice.decode(payload)
