"""tm.core.recurrence: fire times of cron expressions in time zones, and `@every` intervals.

Properties over random expressions, zones and instants — many of them within hours of a DST
transition (found by scanning each zone) — plus worked examples of each rule:

* fire times strictly increase and no instant is produced twice;
* each fire time matches the expression on the zone's wall clock, at the first occurrence of
  that wall-clock time, or is the end of a spring-forward gap that skipped a matching time;
* nothing is left out: around every transition the result equals a brute-force model that
  looks at every minute;
* `next_fire`, `prev_fire` and restarting the iteration anywhere agree with one another;
* `@every` instants are spaced exactly, whatever the zone.
"""

from __future__ import annotations

import functools
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tm.core.recurrence import (
    Recurrence,
    count_between,
    fires_after,
    fires_between,
    next_fire,
    parse_recurrence,
    prev_fire,
)
from tm.core.tasks import InvalidInput

FAST = settings(max_examples=80, deadline=None, database=None)

# DST in spring and autumn, both hemispheres, a 30-minute DST (Lord Howe), a negative DST
# (Dublin's winter time), a zone without DST (Kolkata), a zone that changed its base offset
# and skipped a whole day (Apia, 2011) and one with several transitions a year (Casablanca).
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Europe/Dublin",
    "America/Sao_Paulo",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Africa/Casablanca",
    "UTC",
]
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def wall(zone: ZoneInfo, instant: datetime) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def matches(cron: str, naive: datetime) -> bool:
    """Does the naive wall-clock time `naive` (whole seconds) match `cron`? cronsim decides."""
    return next(CronSim(cron, naive - SECOND)) == naive


@functools.cache
def transitions(name: str) -> tuple[datetime, ...]:
    """Instants (to the second) where `name`'s UTC offset changes, 2008-2031."""
    zone = ZoneInfo(name)
    found = []
    at, end, step = utc(2008, 1, 1), utc(2031, 1, 1), timedelta(hours=6)
    before = at.astimezone(zone).utcoffset()
    while at < end:
        after = at + step
        offset = after.astimezone(zone).utcoffset()
        if offset != before:
            low, high = at, after
            while high - low > SECOND:
                middle = low + (high - low) // 2
                middle = middle.replace(microsecond=0)
                if middle.astimezone(zone).utcoffset() == before:
                    low = middle
                else:
                    high = middle
            found.append(high)
        before, at = offset, after
    return tuple(found)


def test_zones_under_test_have_transitions() -> None:
    for name in ZONES:
        if name not in ("UTC", "Asia/Kolkata"):
            assert len(transitions(name)) >= 10, name
    assert transitions("Asia/Kolkata") == ()


# ---------------------------------------------------------------------------- strategies


def field_values(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    single = st.one_of(
        number.map(str),
        st.tuples(number, number).map(lambda ab: f"{min(ab)}-{max(ab)}"),
        st.tuples(number, number, st.integers(1, high - low + 1)).map(
            lambda abn: f"{min(abn[:2])}-{max(abn[:2])}/{abn[2]}"
        ),
        st.tuples(number, st.integers(1, high - low + 1)).map(lambda an: f"{an[0]}/{an[1]}"),
    )
    return st.one_of(
        st.just("*"),
        st.integers(1, max(1, (high - low) // 2)).map(lambda n: f"*/{n}"),
        st.lists(single, min_size=1, max_size=3).map(",".join),
    )


@st.composite
def crons(draw: st.DrawFn, *, seconds: bool | None = None) -> str:
    """A 5-field (or, with seconds, 6-field) expression that cronsim accepts."""
    fields = [
        draw(st.one_of(st.just("*"), field_values(0, 59))),  # minute
        draw(st.one_of(st.just("*"), field_values(0, 23))),  # hour: often every hour
        draw(st.one_of(st.just("*"), st.just("*"), field_values(1, 31))),  # day of month
        draw(st.one_of(st.just("*"), st.just("*"), field_values(1, 12))),  # month
        draw(st.one_of(st.just("*"), st.just("*"), field_values(0, 6))),  # day of week
    ]
    if seconds is None:
        seconds = draw(st.booleans())
    if seconds:
        fields.insert(0, draw(field_values(0, 59)))
    expression = " ".join(fields)
    try:
        parse_recurrence(expression)
    except InvalidInput:
        assume(False)
    return expression


instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


@st.composite
def near_transition(draw: st.DrawFn, name: str) -> datetime:
    """An instant within 3 hours of one of `name`'s transitions (any instant if it has none)."""
    found = transitions(name)
    if not found:
        return draw(instants)
    centre = draw(st.sampled_from(found))
    offset = draw(st.integers(-3 * 3_600_000_000, 3 * 3_600_000_000))
    return centre + timedelta(microseconds=offset)


@st.composite
def cases(draw: st.DrawFn, *, seconds: bool | None = None) -> tuple[Recurrence, datetime]:
    name = draw(st.sampled_from(ZONES))
    rec = parse_recurrence(draw(crons(seconds=seconds)), name)
    start = draw(st.one_of(near_transition(name), near_transition(name), instants))
    return rec, start


# ---------------------------------------------------------------------------- properties


def check_fire(rec: Recurrence, fire: datetime) -> None:
    """`fire` matches on the wall clock at that time's first occurrence, or ends a gap that
    skipped a matching wall-clock time."""
    assert rec.cron is not None
    zone = rec.zone
    assert fire.tzinfo is UTC and fire.microsecond == 0
    local = fire.astimezone(zone)
    here = wall(zone, fire)
    before = wall(zone, fire - SECOND)
    if here - before > SECOND:  # the wall clock jumped forward at `fire`
        nearest = next(CronSim(rec.cron, before))
        assert nearest <= here, (rec, fire, "gap end but nothing matched in the gap")
        return
    assert matches(rec.cron, here), (rec, fire, local)
    assert local.fold == 0, (rec, fire, "second occurrence of a repeated wall-clock time")


@FAST
@given(cases())
def test_fire_times_increase_match_and_never_repeat(case: tuple[Recurrence, datetime]) -> None:
    rec, start = case
    fires = []
    for fire in fires_after(rec, start):
        fires.append(fire)
        if len(fires) == 40:
            break
    assume(fires)
    assert fires[0] > start
    assert all(a < b for a, b in itertools.pairwise(fires))
    assert len(set(fires)) == len(fires)
    for fire in fires:
        check_fire(rec, fire)


@settings(max_examples=50, deadline=None, database=None)
@given(cases())
def test_next_and_prev_agree_with_the_iteration(case: tuple[Recurrence, datetime]) -> None:
    rec, start = case
    fires = fires_between(rec, start, start + timedelta(days=3), 12)
    assume(len(fires) >= 2)
    assert next_fire(rec, start) == fires[0]
    before = prev_fire(rec, start)
    if before is not None:  # the latest fire time at or before `start` ...
        assert before <= start
        assert next_fire(rec, before) == fires[0]  # ... is followed by the first after it
    for earlier, later in itertools.pairwise(fires):
        # restarting anywhere between two fire times finds the later one
        assert next_fire(rec, earlier) == later
        assert next_fire(rec, later - timedelta(microseconds=1)) == later
        middle = earlier + (later - earlier) / 2
        assert next_fire(rec, middle) == later
        # and looking back finds the earlier one
        assert prev_fire(rec, later - timedelta(microseconds=1)) == earlier
        assert prev_fire(rec, middle) == earlier
        assert prev_fire(rec, later) == later
    assert count_between(rec, start, fires[-1], 1000) == len(fires)


def model(cron: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Brute force over every minute of (start, end]: a minute fires if its wall-clock time
    matches at its first occurrence, or if the wall clock jumped over a matching time."""
    out = []
    at = start.replace(second=0, microsecond=0) + MINUTE
    while at <= end:
        here, before = wall(zone, at), wall(zone, at - MINUTE)
        skipped = []
        step = before + MINUTE
        while step < here:
            skipped.append(step)
            step += MINUTE
        if (at.astimezone(zone).fold == 0 and matches(cron, here)) or any(
            matches(cron, w) for w in skipped
        ):
            out.append(at)
        at += MINUTE
    return out


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from([z for z in ZONES if z not in ("UTC", "Asia/Kolkata")]), st.data())
def test_nothing_left_out_around_transitions(name: str, data: st.DataObject) -> None:
    cron = data.draw(crons(seconds=False))
    centre = data.draw(st.sampled_from(transitions(name)))
    start = centre - timedelta(hours=3) + timedelta(seconds=data.draw(st.integers(0, 3599)))
    end = start + timedelta(hours=6)
    rec = parse_recurrence(cron, name)
    assert fires_between(rec, start, end, 10_000) == model(cron, rec.zone, start, end)


@FAST
@given(
    st.integers(1, 5 * 86_400),
    st.sampled_from(ZONES),
    st.sampled_from(ZONES),
    instants,
)
def test_every_is_exact_elapsed_time_in_any_zone(
    seconds: int, zone_a: str, zone_b: str, start: datetime
) -> None:
    a = parse_recurrence(f"@every {seconds}s", zone_a)
    b = parse_recurrence(f"@every {seconds}s", zone_b)
    fires = fires_between(a, start, start + timedelta(seconds=seconds * 30), 1000)
    assert fires == fires_between(b, start, start + timedelta(seconds=seconds * 30), 1000)
    assert len(fires) == 30
    assert fires[0] > start and fires[0] - start <= timedelta(seconds=seconds)
    assert all(b - a == timedelta(seconds=seconds) for a, b in itertools.pairwise(fires))
    assert all(int(f.timestamp()) % seconds == 0 for f in fires)
    assert prev_fire(a, fires[0] - SECOND / 1000) == fires[0] - timedelta(seconds=seconds)


@settings(max_examples=40, deadline=None, database=None)
@given(st.sampled_from([z for z in ZONES if z not in ("UTC", "Asia/Kolkata")]), st.data())
def test_every_second_across_a_transition(name: str, data: st.DataObject) -> None:
    """`* * * * * *` fires every real second except in a repeated hour's second pass;
    `@every 1s` fires every real second, full stop."""
    centre = data.draw(st.sampled_from(transitions(name)))
    start, end = centre - timedelta(minutes=2), centre + timedelta(minutes=2)
    every = fires_between(parse_recurrence("@every 1s", name), start, end, 1000)
    assert len(every) == 240
    fires = fires_between(parse_recurrence("* * * * * *", name), start, end, 1000)
    zone = ZoneInfo(name)
    assert fires == [t for t in every if t.astimezone(zone).fold == 0]


# ---------------------------------------------------------------------------- worked examples


def fires(cron: str, zone: str, start: datetime, count: int) -> list[datetime]:
    out = []
    for fire in fires_after(parse_recurrence(cron, zone), start):
        out.append(fire)
        if len(out) == count:
            return out
    return out


def test_berlin_spring_forward_runs_a_skipped_time_once_at_the_next_valid_instant() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST, 02:30 does not exist.
    assert fires("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first valid instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # several skipped times collapse into one run; 03:00 itself matches too: still one
    assert fires("*/15 2,3 * * *", "Europe/Berlin", utc(2026, 3, 29, 0, 50), 4) == [
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST (02:00-02:45 were skipped; 03:00 matches)
        utc(2026, 3, 29, 1, 15),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 1, 45),
    ]


def test_berlin_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET, 02:00-02:59 happen twice.
    assert fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST; not again at 02:30 CET (01:30Z)
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    hourly = fires("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 22, 30), 5)
    assert [f.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M%z") for f in hourly] == [
        "01:00+0200", "02:00+0200", "03:00+0100", "04:00+0100", "05:00+0100",
    ]
    # asked from inside the second pass, the next run is after the repetition
    rec = parse_recurrence("*/20 * * * *", "Europe/Berlin")
    assert next_fire(rec, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 2, 0)  # 03:00 CET
    assert prev_fire(rec, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 0, 40)  # 02:40 CEST


def test_new_york_transitions() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    assert fires("*/15 2 * * *", "America/New_York", utc(2026, 3, 8, 6), 2) == [
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT stands in for 02:00-02:45
        utc(2026, 3, 9, 6, 0),  # 02:00 EDT the next day
    ]
    assert fires("0 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT, not 01:00 EST (06:00Z)
        utc(2026, 11, 2, 6, 0),
    ]


def test_lord_howe_half_hour_dst() -> None:
    # 2026-10-04 02:00 +10:30 -> 02:30 +11; 2026-04-05 02:00 +11 -> 01:30 +10:30.
    assert fires("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 12), 2) == [
        utc(2026, 10, 3, 15, 30),  # 02:30 +11, the end of the gap
        utc(2026, 10, 4, 15, 15),  # 02:15 +11
    ]
    assert fires("45 1 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 12), 2) == [
        utc(2026, 4, 4, 14, 45),  # 01:45 +11, first occurrence only
        utc(2026, 4, 5, 15, 15),  # 01:45 +10:30
    ]


def test_kolkata_has_no_transitions_and_a_half_hour_offset() -> None:
    assert fires("0 9 * * *", "Asia/Kolkata", utc(2026, 3, 29), 2) == [
        utc(2026, 3, 29, 3, 30),
        utc(2026, 3, 30, 3, 30),
    ]


def test_every_ignores_dst() -> None:
    rec = parse_recurrence("@every 30m", "Europe/Berlin")
    got = fires_between(rec, utc(2026, 3, 29, 0, 10), utc(2026, 3, 29, 2, 10), 10)
    assert got == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30),
                   utc(2026, 3, 29, 2)]


def test_seconds_field_and_macros() -> None:
    assert fires("*/20 * * * * *", "UTC", utc(2026, 1, 1, 0, 0, 5), 3) == [
        utc(2026, 1, 1, 0, 0, 20), utc(2026, 1, 1, 0, 0, 40), utc(2026, 1, 1, 0, 1, 0),
    ]
    assert fires("@daily", "Asia/Kolkata", utc(2026, 1, 1), 1) == [utc(2026, 1, 1, 18, 30)]
    assert fires("@hourly", "UTC", utc(2026, 1, 1, 0, 0, 0, 1), 1) == [utc(2026, 1, 1, 1)]
    assert parse_recurrence(" @WEEKLY ").cron == "0 0 * * 0"


def test_a_schedule_that_never_fires_again_ends() -> None:
    rec = parse_recurrence("0 0 29 2 *", "UTC")  # leap days only
    assert next_fire(rec, utc(2027, 1, 1)) == utc(2028, 2, 29)
    assert list(fires_after(rec, utc(9998, 1, 1))) == []


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("cron", "zone", "words"),
    [
        ("61 * * * *", "UTC", ["cron", "61 * * * *", "minute"]),
        ("* * *", "UTC", ["cron", "fields"]),
        ("*/0 * * * *", "UTC", ["cron", "minute"]),
        ("0 0 31 2 *", "UTC", ["cron", "day-of-month"]),
        ("* * * * * * *", "UTC", ["cron", "fields"]),
        ("", "UTC", ["cron", "empty"]),
        ("@often", "UTC", ["cron", "@often", "macro"]),
        ("@every 0s", "UTC", ["@every", "1 s"]),
        ("@every soon", "UTC", ["@every", "duration"]),
        ("@every 1.5s", "UTC", ["@every", "whole"]),
        ("*/5 * * * *", "Mars/Olympus_Mons", ["timezone", "Mars/Olympus_Mons"]),
        ("*/5 * * * *", "../etc/passwd", ["timezone"]),
        ("*/5 * * * *", "europe/berlin", ["timezone"]),
        ("*/5 * * * *", "", ["timezone"]),
        (None, "UTC", ["cron", "required"]),
        (5, "UTC", ["cron", "string"]),
        ("*/5 * * * *", 3, ["timezone", "string"]),
        ("x" * 201, "UTC", ["cron", "200"]),
        ("* * * * \u00e9", "UTC", ["cron", "ASCII"]),
    ],
)
def test_invalid_expressions_and_zones_name_the_problem(
    cron: object, zone: object, words: list[str]
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_recurrence(cron, zone)
    for word in words:
        assert word.lower() in str(caught.value).lower(), (word, str(caught.value))


@FAST
@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_parsing_never_fails_otherwise(cron: str, zone: str | None) -> None:
    try:
        rec = parse_recurrence(cron, zone)
    except InvalidInput as exc:
        assert str(exc)
        return
    next_fire(rec, utc(2026, 1, 1))


def test_naive_instants_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire(parse_recurrence("* * * * *"), datetime(2026, 1, 1))
