"""tm.core.timefmt: the wire format of times, strict parsing, and exact epoch microseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tm.core.timefmt import TimeFormatError, format_time, from_micros, parse_time, to_micros

FAST = settings(max_examples=100, deadline=None, database=None)

WIRE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

# Fixed offsets strictly inside a day, as RFC 3339 allows.
fixed_offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                  max_value=timedelta(hours=23, minutes=59)).map(
        lambda d: timedelta(minutes=round(d.total_seconds() / 60))
    ),
)
zones = st.one_of(st.just(UTC), fixed_offsets, st.timezones())

# Years 1000..9998: four-digit years (see test_format_pads_years_below_1000 for the others)
# and a day of margin at each end so that converting to UTC cannot leave datetime's range
# (see test_parse_time_refuses_times_outside_the_representable_range).
aware = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=zones
)


def test_format_time_example() -> None:
    value = datetime(2026, 11, 27, 3, 31, 57, 123456, tzinfo=UTC)
    assert format_time(value) == "2026-11-27T03:31:57.123456Z"


def test_format_time_converts_to_utc_and_always_writes_microseconds() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    assert format_time(datetime(2026, 11, 27, 9, 1, 57, tzinfo=india)) == (
        "2026-11-27T03:31:57.000000Z"
    )
    # Crossing midnight backwards into the previous day (and month).
    assert format_time(datetime(2026, 12, 1, 2, 0, tzinfo=timezone(timedelta(hours=3)))) == (
        "2026-11-30T23:00:00.000000Z"
    )


def test_format_time_none_and_naive() -> None:
    assert format_time(None) is None
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 11, 27, 3, 31, 57))


@FAST
@given(aware)
def test_format_time_shape_and_value(value: datetime) -> None:
    text = format_time(value)
    assert text is not None
    assert WIRE.fullmatch(text), text
    utc = value.astimezone(UTC)
    assert text == (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


@FAST
@given(aware)
def test_parse_inverts_format(value: datetime) -> None:
    text = format_time(value)
    assert text is not None
    back = parse_time(text, "at")
    assert back.tzinfo is UTC
    # Compare in UTC: inter-zone comparison of a time in a repeated hour is always unequal
    # (PEP 495), which says nothing about this code.
    assert back == value.astimezone(UTC)
    assert format_time(back) == text


@FAST
@given(aware)
def test_parse_accepts_isoformat_with_any_offset(value: datetime) -> None:
    back = parse_time(value.isoformat(), "at")
    assert back.tzinfo is UTC
    assert back == value.astimezone(UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-12-25T22:34:00+05:30", datetime(2023, 12, 25, 17, 4, tzinfo=UTC)),
        ("2023-12-25T22:34:00-08:00", datetime(2023, 12, 26, 6, 34, tzinfo=UTC)),
        ("2023-12-25T22:34:00Z", datetime(2023, 12, 25, 22, 34, tzinfo=UTC)),
        ("2023-12-25T22:34:00+00:00", datetime(2023, 12, 25, 22, 34, tzinfo=UTC)),
        ("2023-12-25 22:34:00.5+01:00", datetime(2023, 12, 25, 21, 34, 0, 500000, tzinfo=UTC)),
        ("  2023-12-25T22:34:00.123456Z\n", datetime(2023, 12, 25, 22, 34, 0, 123456, tzinfo=UTC)),
    ],
)
def test_parse_time_converts_offsets_to_utc(text: str, expected: datetime) -> None:
    value = parse_time(text, "scheduled_at")
    assert value == expected
    assert value.tzinfo is UTC
    assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["2023-12-25T22:34:00", "2023-12-25 22:34", "2023-12-25T22:34:00.1"]
)
def test_parse_time_refuses_naive_times(text: str) -> None:
    with pytest.raises(TimeFormatError) as info:
        parse_time(text, "scheduled_at")
    message = str(info.value)
    assert message.startswith("scheduled_at ")
    assert "offset" in message
    assert "+05:30" in message  # tells the person how to fix it


@pytest.mark.parametrize("text", ["2023-12-25", "20231225", "", "   ", "tomorrow"])
def test_parse_time_refuses_a_date_without_a_time(text: str) -> None:
    with pytest.raises(TimeFormatError, match=r"^run_at must be a date and time with an offset"):
        parse_time(text, "run_at")


@pytest.mark.parametrize(
    "text",
    ["2023-13-25T22:34:00Z", "2023-12-25T25:00:00Z", "not a time", "2023-12-25T22:34:00+24:00",
     "2023-02-30T00:00:00Z", "T"],
)
def test_parse_time_refuses_garbage_naming_the_field(text: str) -> None:
    with pytest.raises(TimeFormatError) as info:
        parse_time(text, "scheduled_at")
    assert str(info.value).startswith("scheduled_at ")


@FAST
@given(st.text(max_size=40))
def test_parse_time_only_ever_raises_time_format_error(text: str) -> None:
    try:
        value = parse_time(text, "at")
    except TimeFormatError as exc:
        assert str(exc).startswith("at ")
    else:
        assert value.tzinfo is UTC


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_parse_time_refuses_times_outside_the_representable_range(text: str) -> None:
    with pytest.raises(TimeFormatError, match="scheduled_at"):
        parse_time(text, "scheduled_at")


def test_format_pads_years_below_1000() -> None:
    value = parse_time("0999-01-01T00:00:00Z", "scheduled_at")
    text = format_time(value)
    assert text == "0999-01-01T00:00:00.000000Z"
    assert parse_time(text, "scheduled_at") == value


def test_micros_examples() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert to_micros(epoch) == 0
    assert to_micros(epoch + timedelta(microseconds=1)) == 1
    assert to_micros(epoch - timedelta(microseconds=1)) == -1
    assert from_micros(-1) == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert to_micros(datetime(2026, 11, 27, 3, 31, 57, 123456, tzinfo=UTC)) == (
        1_795_750_317_123_456
    )
    # Same instant in another zone, same number.
    assert to_micros(datetime(2026, 11, 27, 9, 1, 57, 123456,
                              tzinfo=timezone(timedelta(hours=5, minutes=30)))) == (
        1_795_750_317_123_456
    )


MIN_MICROS = to_micros(datetime.min.replace(tzinfo=UTC))
MAX_MICROS = to_micros(datetime.max.replace(tzinfo=UTC))


@FAST
@given(st.integers(min_value=MIN_MICROS, max_value=MAX_MICROS))
@example(MIN_MICROS)
@example(MAX_MICROS)
@example(0)
@example(-1)
def test_from_micros_inverts_to_micros(micros: int) -> None:
    value = from_micros(micros)
    assert value.tzinfo is UTC
    assert to_micros(value) == micros


@FAST
@given(aware)
def test_to_micros_inverts_from_micros(value: datetime) -> None:
    micros = to_micros(value)
    assert isinstance(micros, int)
    assert from_micros(micros) == value.astimezone(UTC)
    # Order is kept exactly, to the microsecond. (Added in UTC: wall-clock arithmetic in
    # a zone drops `fold`, so 1 µs after the second 01:30 of a repeated hour would be the
    # first 01:30 plus 1 µs, an hour earlier — a case hypothesis found.)
    assert to_micros(value.astimezone(UTC) + timedelta(microseconds=1)) == micros + 1
