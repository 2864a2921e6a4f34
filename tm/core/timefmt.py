"""Times on the wire: RFC 3339 in UTC with microseconds, and strict parsing of input.

Input times must carry an offset; a naive time is refused rather than guessed, because
guessing a zone is how schedulers run jobs hours early or late.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimeFormatError(ValueError):
    """An input time that cannot be accepted; the message is for a person."""


def format_time(value: datetime | None) -> str | None:
    """`2026-11-27T03:31:57.123456Z` for an aware datetime, None for None."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime cannot be formatted as UTC")
    v = value.astimezone(UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:"
            f"{v.second:02d}.{v.microsecond:06d}Z")


def parse_time(text: str, field: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time that carries an offset, returned in UTC."""
    stripped = text.strip()
    if "T" not in stripped and " " not in stripped:
        raise TimeFormatError(
            f"{field} must be a date and time with an offset, e.g. 2026-11-27T03:31:57Z"
        )
    try:
        value = datetime.fromisoformat(stripped)
    except ValueError:
        raise TimeFormatError(
            f"{field} is not an RFC 3339 time: {text[:64]!r} "
            "(expected e.g. 2023-12-25T22:34:00+05:30)"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise TimeFormatError(
            f"{field} has no UTC offset: {text[:64]!r}; add 'Z' or an offset like '+05:30'"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise TimeFormatError(f"{field} is out of range: {text[:64]!r}") from None


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float rounding)."""
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Inverse of to_micros. OverflowError outside datetime's range (years 1-9999)."""
    return _EPOCH + timedelta(microseconds=micros)
