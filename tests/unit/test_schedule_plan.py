"""tm.core.schedules: schedule input, and which due occurrences run (catch_up, overlap).

The property test drives `plan_occurrences` the way the coordinator does — rounds at random
times, with outages between some, a small per-call limit so that long backlogs take several
calls — and compares what it creates with a plain model written over lists of fire times.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tm.core.recurrence import Recurrence, fires_between, next_fire, parse_recurrence
from tm.core.schedules import (
    CatchUp,
    Overlap,
    Plan,
    parse_new_schedule,
    parse_schedule_patch,
    plan_occurrences,
    spec_fields,
)
from tm.core.tasks import InvalidInput

FAST = settings(max_examples=150, deadline=None, database=None)
T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
GRACE = timedelta(seconds=5)


def plan(cron: str, next_at: datetime, now: datetime, zone: str = "UTC", **kw: Any) -> Plan:
    options: dict[str, Any] = {"catch_up": CatchUp.NONE, "overlap": Overlap.ALLOW,
                               "unfinished_run": False, "grace": GRACE}
    return plan_occurrences(parse_recurrence(cron, zone), next_at, now, **{**options, **kw})


def at(hours: int = 0, minutes: int = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes, seconds=seconds)


# ---------------------------------------------------------------------------- examples


def test_nothing_due_changes_nothing() -> None:
    assert plan("@hourly", at(1), at(0, 59)) == Plan((), 0, 0, at(1), False)


def test_an_occurrence_runs_on_time_and_the_next_one_is_planned() -> None:
    assert plan("@hourly", at(1), at(1, seconds=0.02)) == Plan((at(1),), 0, 0, at(2), False)


@pytest.mark.parametrize(
    ("catch_up", "run", "missed"),
    [
        (CatchUp.NONE, (), 3),
        (CatchUp.LATEST, (at(3),), 2),
        (CatchUp.ALL, (at(1), at(2), at(3)), 0),
    ],
)
def test_catch_up_after_an_outage(catch_up: CatchUp, run: tuple[datetime, ...],
                                  missed: int) -> None:
    # hourly; nothing ran from 00:30 to 03:30
    assert plan("@hourly", at(1), at(3, 30), catch_up=catch_up) == Plan(
        run, 0, missed, at(4), False)


def test_an_occurrence_within_the_grace_runs_and_latest_adds_nothing_to_it() -> None:
    # every minute; back at 00:05:03: 00:05 is on time (3 s old), 00:01-00:04 were missed
    for catch_up in (CatchUp.NONE, CatchUp.LATEST):
        assert plan("* * * * *", at(0, 1), at(0, 5, 3), catch_up=catch_up) == Plan(
            (at(0, 5),), 0, 4, at(0, 6), False)


def test_overlap_skip() -> None:
    busy = plan("@hourly", at(1), at(1, seconds=1), overlap=Overlap.SKIP, unfinished_run=True)
    assert busy == Plan((), 1, 0, at(2), False)
    backlog = plan("@hourly", at(1), at(3, 30), overlap=Overlap.SKIP, catch_up=CatchUp.ALL)
    assert backlog == Plan((at(1),), 2, 0, at(4), False)


def test_a_long_backlog_is_taken_in_bounded_steps() -> None:
    first = plan("@every 1s", at(0), at(1), catch_up=CatchUp.ALL, limit=1000)
    assert len(first.run) == 1000 and first.more
    assert first.run[0] == at(0) and first.run[-1] == at(0, 16, 39)
    assert first.next_fire_at == at(0, 16, 40)
    # catch_up none does not even enumerate what it drops
    dropped = plan("@every 1s", at(0), at(1), catch_up=CatchUp.NONE, limit=1000)
    assert dropped == Plan(tuple(at(seconds=3600 - s) for s in (5, 4, 3, 2, 1, 0)),
                           0, 3595, at(1, seconds=1), False)


def test_a_schedule_that_ends() -> None:
    end = plan("0 0 29 2 *", datetime(9996, 2, 29, tzinfo=UTC), datetime(9996, 2, 29, 0, 0, 1,
                                                                           tzinfo=UTC))
    assert end.run == (datetime(9996, 2, 29, tzinfo=UTC),) and end.next_fire_at is None


# ---------------------------------------------------------------------------- the model


def model(rec: Recurrence, start: datetime, rounds: list[datetime], catch_up: CatchUp,
          grace: timedelta) -> tuple[list[datetime], int]:
    """What the rules of tm.core.schedules say should be created, and how many missed."""
    pending = next_fire(rec, start)
    created: list[datetime] = []
    missed = 0
    for now in rounds:
        if pending is None or pending > now:
            continue
        due = [pending, *fires_between(rec, pending, now, 100_000)]
        if catch_up is CatchUp.ALL:
            created += due
        else:
            on_time = [f for f in due if f >= now - grace]
            late = [f for f in due if f < now - grace]
            if catch_up is CatchUp.LATEST and late and not on_time:
                created.append(late[-1])
                late = late[:-1]
            created += on_time
            missed += len(late)
        pending = next_fire(rec, now)
    return created, missed


EXPRESSIONS = ["@every 1s", "@every 7s", "*/3 * * * * *", "* * * * *", "*/2 * * * *",
               "0,30 * * * * *", "15 10 * * * *", "*/20 * * * * 0-2"]


@FAST
@given(
    st.sampled_from(EXPRESSIONS),
    st.sampled_from(["UTC", "Europe/Berlin", "Australia/Lord_Howe"]),
    st.sampled_from(list(CatchUp)),
    st.lists(st.one_of(st.floats(0.01, 4), st.floats(0.01, 4), st.floats(4, 900)),
             min_size=1, max_size=40),
    st.integers(1, 8),
    st.integers(1, 30),
)
def test_rounds_create_what_the_model_says(
    cron: str, zone: str, catch_up: CatchUp, gaps: list[float], limit: int, grace_s: int
) -> None:
    rec = parse_recurrence(cron, zone)
    grace = timedelta(seconds=grace_s)
    start = datetime(2026, 3, 29, 0, 55, tzinfo=UTC)  # Berlin changes its clocks at 01:00Z
    rounds, now = [], start
    for gap in gaps:
        now += timedelta(seconds=gap)
        rounds.append(now)
    expected, expected_missed = model(rec, start, rounds, catch_up, grace)

    pending = next_fire(rec, start)
    created: list[datetime] = []
    missed = 0
    for now in rounds:
        while pending is not None:
            result = plan_occurrences(rec, pending, now, catch_up=catch_up,
                                      overlap=Overlap.ALLOW, unfinished_run=False, grace=grace,
                                      limit=limit)
            assert all(f <= now for f in result.run)  # never created early
            assert len(result.run) <= limit
            created += result.run
            missed += result.missed
            assert result.next_fire_at is None or result.next_fire_at > (
                result.run[-1] if result.run else pending - timedelta(microseconds=1))
            pending = result.next_fire_at
            if not result.more:
                assert pending is None or pending > now
                break
    assert created == expected
    assert missed == expected_missed
    assert len(set(created)) == len(created)


@FAST
@given(st.sampled_from(EXPRESSIONS), st.sampled_from(list(CatchUp)), st.booleans(),
       st.integers(0, 5000))
def test_overlap_skip_runs_at_most_one_and_none_while_busy(
    cron: str, catch_up: CatchUp, busy: bool, late_s: int
) -> None:
    rec = parse_recurrence(cron)
    pending = next_fire(rec, T0)
    assert pending is not None
    now = pending + timedelta(seconds=late_s)
    allow = plan_occurrences(rec, pending, now, catch_up=catch_up, overlap=Overlap.ALLOW,
                             unfinished_run=busy, grace=GRACE)
    skip = plan_occurrences(rec, pending, now, catch_up=catch_up, overlap=Overlap.SKIP,
                            unfinished_run=busy, grace=GRACE)
    assert skip.run == (() if busy else allow.run[:1])
    assert skip.skipped == len(allow.run) - len(skip.run)
    assert (skip.missed, skip.next_fire_at, skip.more) == (allow.missed, allow.next_fire_at,
                                                           allow.more)


# ---------------------------------------------------------------------------- input


def test_new_schedule_defaults_and_task_rules() -> None:
    spec = parse_new_schedule({"name": "nightly.backup_1", "cron": " 0  3 * * * ",
                               "command": "backup"})
    assert spec_fields(spec) == {
        "cron": "0 3 * * *", "timezone": "UTC", "command": "backup", "max_attempts": 1,
        "timeout_s": None, "at_most_once": False, "overlap": "allow", "catch_up": "latest",
        "paused": False,
    }
    with pytest.raises(InvalidInput, match="command"):
        parse_new_schedule({"name": "x", "cron": "@daily", "command": "a\x00b"})
    with pytest.raises(InvalidInput, match="max_attempts"):
        parse_new_schedule({"name": "x", "cron": "@daily", "command": "a", "max_attempts": True})


def test_patch_merges_and_reports_what_changed() -> None:
    stored = {"name": "n", **spec_fields(parse_new_schedule(
        {"name": "n", "cron": "@daily", "command": "a", "timeout_s": 5}))}
    edit = parse_schedule_patch(stored, {"timeout_s": None})
    assert edit.changed and not edit.timing_changed and edit.spec.timeout_s is None
    assert not parse_schedule_patch(stored, {"cron": "@daily", "name": "n"}).changed
    assert parse_schedule_patch(stored, {"timezone": "Asia/Kolkata"}).timing_changed
    assert parse_schedule_patch(stored, {"paused": True}).paused
    resumed = parse_schedule_patch({**stored, "paused": True}, {"paused": False})
    assert resumed.resumed and not resumed.paused
    with pytest.raises(InvalidInput, match="name cannot be changed"):
        parse_schedule_patch(stored, {"name": "m"})
    with pytest.raises(InvalidInput, match="timezone"):
        parse_schedule_patch(stored, {"timezone": "Nowhere/Town"})
