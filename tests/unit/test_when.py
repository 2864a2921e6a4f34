"""tm.core.when: `tm submit --at` values -> aware UTC datetimes, with `now` as an argument."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tm.core.timefmt import format_time
from tm.core.when import parse_duration, parse_when

FAST = settings(max_examples=200, deadline=None, database=None)

NOW = datetime(2026, 11, 27, 3, 31, 57, 123456, tzinfo=UTC)
INDIA = timezone(timedelta(hours=5, minutes=30))

zones = st.one_of(
    st.just(UTC),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
        lambda m: timezone(timedelta(minutes=m))
    ),
    st.timezones(),
)
# A margin of a century at each end keeps `now + duration` and zone conversions in range.
nows = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=zones
)

UNIT_NAMES = {
    "d": ["d", "day", "days"],
    "h": ["h", "hr", "hrs", "hour", "hours"],
    "m": ["m", "min", "mins", "minute", "minutes"],
    "s": ["s", "sec", "secs", "second", "seconds"],
}
UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


@st.composite
def durations(draw: st.DrawFn) -> tuple[str, timedelta]:
    """A duration as a person may type it (units largest first), and its value."""
    units = draw(
        st.lists(st.sampled_from("dhms"), min_size=1, max_size=4, unique=True).map(
            lambda us: sorted(us, key="dhms".index)
        )
    )
    text = ""
    seconds = 0
    for unit in units:
        amount = draw(st.integers(min_value=0, max_value=10_000))
        name = draw(st.sampled_from(UNIT_NAMES[unit]))
        if draw(st.booleans()):
            name = name.upper()
        gap, after = draw(st.sampled_from(["", " "])), draw(st.sampled_from(["", " "]))
        text += f"{amount}{gap}{name}{after}"
        seconds += amount * UNIT_SECONDS[unit]
    return text.strip(), timedelta(seconds=seconds)


def assert_utc(value: datetime) -> None:
    assert value.tzinfo is UTC, value


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("  NOW ", NOW),
        ("in 5m", NOW + timedelta(minutes=5)),
        ("in 90s", NOW + timedelta(seconds=90)),
        ("in 2h", NOW + timedelta(hours=2)),
        ("in 1d", NOW + timedelta(days=1)),
        ("in 1h30m", NOW + timedelta(hours=1, minutes=30)),
        ("in 1h 30m", NOW + timedelta(hours=1, minutes=30)),
        ("in 5 minutes", NOW + timedelta(minutes=5)),
        ("in5m", NOW + timedelta(minutes=5)),
        ("+5m", NOW + timedelta(minutes=5)),
        ("+ 1d2h3m4s", NOW + timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("in 0s", NOW),
        ("2023-12-25T22:34:00+05:30", datetime(2023, 12, 25, 17, 4, tzinfo=UTC)),
        ("2026-11-27T03:31:57.5Z", datetime(2026, 11, 27, 3, 31, 57, 500000, tzinfo=UTC)),
    ],
)
def test_examples(text: str, expected: datetime) -> None:
    value = parse_when(text, NOW)
    assert value == expected
    assert_utc(value)


def test_now_in_another_zone_is_returned_in_utc() -> None:
    local_now = NOW.astimezone(INDIA)
    value = parse_when("in 1m", local_now)
    assert value == NOW + timedelta(minutes=1)
    assert_utc(value)
    assert format_time(value) == "2026-11-27T03:32:57.123456Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-27T03:31:57", "no UTC offset"),
        ("2026-11-27 03:31", "no UTC offset"),
        ("2026-11-27", "date and time with an offset"),
        ("", "empty"),
        ("   ", "empty"),
        ("tomorrow", "cannot read 'tomorrow'"),
        ("in", "duration is missing"),
        ("+", "duration is missing"),
        ("in 5", "5 needs a unit"),
        ("in 5x", "unknown unit 'x'"),
        ("in 5ms", "unknown unit 'ms'"),
        ("in 1.5h", "whole numbers"),
        ("in 1,5h", "whole numbers"),
        ("in 30m1h", "largest to smallest"),
        ("in 5m5m", "appears twice"),
        ("in 1m 2min", "appears twice"),
        ("in -5m", "cannot read the duration"),
        ("-5m", "count forward"),
        ("5m", "did you mean 'in 5m'"),
        ("in 99999999999999999999d", "too far in the future"),
        ("in 99999999d", "too far in the future"),
        ("in 9000000000000s", "too far in the future"),
    ],
)
def test_refusals_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--at") as info:
        parse_when(text, NOW)
    assert message in str(info.value)


def test_field_name_is_used_in_messages() -> None:
    with pytest.raises(ValueError, match=r"^when: "):
        parse_when("in 5x", NOW, field="when")


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_when("now", datetime(2026, 1, 1))


def test_a_duration_past_year_9999_is_refused() -> None:
    late = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="too far in the future"):
        parse_when("in 2h", late)


# ------------------------------------------------------------------ properties


@FAST
@given(nows, durations(), st.sampled_from(["in ", "in", "+", "+ ", "IN  ", "  in\t"]))
@example(NOW, ("1h30m", timedelta(hours=1, minutes=30)), "in ")
def test_relative_time_is_now_plus_the_duration(
    now: datetime, duration: tuple[str, timedelta], prefix: str
) -> None:
    text, delta = duration
    value = parse_when(prefix + text, now)
    assert_utc(value)
    # Elapsed time: aware subtraction works in UTC whatever `now`'s zone (DST included).
    assert value - now == delta
    assert parse_duration(text) == delta


@FAST
@given(nows)
def test_now_is_now_in_utc(now: datetime) -> None:
    value = parse_when("now", now)
    assert_utc(value)
    # (`==` across zones is always False for a time in a DST fold; subtraction is exact.)
    assert value - now == timedelta(0)


@FAST
@given(
    st.datetimes(
        min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=zones
    ),
    nows,
)
def test_rfc3339_times_do_not_depend_on_now(when: datetime, now: datetime) -> None:
    for text in (when.isoformat(), format_time(when) or ""):
        value = parse_when(text, now)
        assert_utc(value)
        assert value - when == timedelta(0)


@FAST
@given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30)))
def test_naive_times_are_refused(when: datetime) -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_when(when.isoformat(), NOW)


@FAST
@given(st.text(max_size=40), nows)
@example("in 1h30m1h", NOW)
@example("+" + "9" * 5000 + "s", NOW)
def test_any_text_gives_utc_or_a_value_error(text: str, now: datetime) -> None:
    try:
        value = parse_when(text, now)
    except ValueError as exc:
        assert str(exc), text
        return
    assert_utc(value)


@FAST
@given(nows, durations())
def test_a_bare_duration_is_refused_with_a_hint(
    now: datetime, duration: tuple[str, timedelta]
) -> None:
    text, _ = duration
    with pytest.raises(ValueError, match="did you mean 'in "):
        parse_when(text, now)
