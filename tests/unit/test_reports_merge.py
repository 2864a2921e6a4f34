"""tm.core.reports: the one merge of a task's reports, as the worker and the database use it.

`merge` is what the worker does when a result is ready while its `started` is unsent, and
`collapse` (merge over a batch) is what the report statement receives: checked here against
what a batch of reports must mean — the latest attempt's last report, carrying the latest
start time known for that attempt.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tm.core.reports import RESULTS, Report, ReportKind, collapse, merge

FAST = settings(max_examples=300, deadline=None, database=None)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
IDS = [uuid.UUID(int=n) for n in range(1, 4)]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_result_standing_in_for_its_unsent_started_carries_its_time() -> None:
    started = Report("t1", 2, ReportKind.STARTED, at(1))
    done = Report("t1", 2, ReportKind.COMPLETED, at(5), exit_code=0, output="hi")
    merged = merge(started, done)
    assert merged == Report("t1", 2, ReportKind.COMPLETED, at(5), started_at=at(1),
                            exit_code=0, output="hi")
    assert merged.start_time == at(1)


def test_an_earlier_attempt_never_replaces_a_later_one() -> None:
    later = Report("t1", 3, ReportKind.STARTED, at(9))
    late = Report("t1", 2, ReportKind.FAILED, at(10), error="boom")
    assert merge(later, late) is later
    # ... and a later attempt replaces an earlier one whole, with no start time of it
    newer = Report("t1", 4, ReportKind.COMPLETED, at(11))
    assert merge(later, newer) is newer
    assert merge(later, newer).start_time is None


def test_a_result_keeps_its_own_start_time() -> None:
    started = Report("t1", 1, ReportKind.STARTED, at(1))
    result = Report("t1", 1, ReportKind.FAILED, at(4), started_at=at(2), error="x")
    assert merge(started, result) is result


def test_collapse_keeps_tasks_in_first_appearance_order() -> None:
    a, b = IDS[:2]
    batch = [
        Report(b, 1, ReportKind.STARTED, at(1)),
        Report(a, 1, ReportKind.STARTED, at(2)),
        Report(b, 1, ReportKind.COMPLETED, at(3)),
    ]
    assert collapse(batch) == [
        Report(b, 1, ReportKind.COMPLETED, at(3), started_at=at(1)),
        Report(a, 1, ReportKind.STARTED, at(2)),
    ]
    assert collapse([]) == []


@st.composite
def reports(draw: st.DrawFn) -> Report[uuid.UUID]:
    kind = draw(st.sampled_from(ReportKind))
    carried = kind is not ReportKind.STARTED and draw(st.booleans())
    return Report(
        draw(st.sampled_from(IDS)),
        draw(st.integers(min_value=1, max_value=3)),
        kind,
        at(draw(st.integers(0, 100))),
        started_at=at(draw(st.integers(0, 100))) if carried else None,
        exit_code=draw(st.integers(0, 3)) if kind in RESULTS else None,
        error=draw(st.sampled_from([None, "x", "y"])),
        jitter=draw(st.floats(0, 1)),
    )


@FAST
@given(st.lists(reports(), max_size=12))
def test_collapse_is_the_latest_attempts_last_report_with_its_latest_start(
    batch: list[Report[uuid.UUID]],
) -> None:
    collapsed = collapse(batch)
    assert [r.task_id for r in collapsed] == list(dict.fromkeys(r.task_id for r in batch))
    for report in collapsed:
        mine = [r for r in batch if r.task_id == report.task_id]
        attempt = max(r.attempt for r in mine)
        current = [r for r in mine if r.attempt == attempt]
        last = current[-1]
        start = None
        for r in current:
            start = r.start_time or start
        assert report.attempt == attempt
        assert (report.kind, report.at, report.exit_code, report.output, report.error,
                report.jitter) == (last.kind, last.at, last.exit_code, last.output,
                                   last.error, last.jitter)
        assert report.start_time == start
