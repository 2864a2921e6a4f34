"""When a task should run, as a person types it on the command line (`tm submit --at`).

Accepted, case-insensitively, surrounding blanks ignored:

* an RFC 3339 / ISO 8601 time **with an offset** (`2026-11-27T03:31:57Z`, `...+05:30`);
  a naive time is refused, exactly as the HTTP API refuses it (tm.core.timefmt);
* `now`;
* a duration from now: `in 5m`, `in 90s`, `in 2h`, `in 1d`, `in 1h30m`, `in 1h 30m`, or the
  same after `+` (`+5m`). Units are `d`, `h`, `m`, `s` (also `day(s)`, `hour(s)`/`hr(s)`,
  `min(s)`/`minute(s)`, `sec(s)`/`second(s)`), largest first, each at most once; amounts are
  whole numbers, so `1.5h` is written `1h30m`.

Invariants: the result is always an aware datetime in UTC; a relative time is exactly
`now + duration` in elapsed time (never rounded; a day is 86,400 s even across a DST change
of `now`'s zone, i.e. computed in UTC); anything refused raises ValueError whose message names the
field and shows accepted forms. `now` is an argument: this module reads no clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tm.core.timefmt import parse_time

_UNITS: dict[str, str] = {}
for _unit, _names in {
    "d": ("d", "day", "days"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "m": ("m", "min", "mins", "minute", "minutes"),
    "s": ("s", "sec", "secs", "second", "seconds"),
}.items():
    for _name in _names:
        _UNITS[_name] = _unit
_ORDER = "dhms"
_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_MAX_DIGITS = 12  # 10^12 s is ~31,700 years: anything longer cannot be a datetime anyway

_PART = re.compile(r"\s*(\d+)\s*([a-z]*)\s*")
_IN = re.compile(r"in(?:$|[\s\d])")  # `in 5m`, and forgiving of `in5m`
_EXAMPLES = "e.g. 'in 90s', 'in 5m', 'in 1h30m', 'in 1d' or '+5m'"


class WhenError(ValueError):
    """A `--at` value that cannot be accepted; the message is for a person."""


def parse_duration(text: str, field: str = "--at") -> timedelta:
    """`1h30m`, `90s`, `2 hours` ... as a timedelta (see the module docstring for the forms)."""
    lowered = text.strip().lower()
    if not lowered:
        raise WhenError(f"{field}: a duration is missing after 'in' or '+' ({_EXAMPLES})")
    if "." in lowered or "," in lowered:
        raise WhenError(f"{field}: amounts are whole numbers; write 1.5h as 'in 1h30m'")
    seen: list[str] = []
    total = 0
    pos = 0
    while pos < len(lowered):
        match = _PART.match(lowered, pos)
        if match is None:
            raise WhenError(
                f"{field}: cannot read the duration {text.strip()[:64]!r} ({_EXAMPLES})"
            )
        digits, name = match.groups()
        if not name:
            raise WhenError(
                f"{field}: {digits} needs a unit: s, m, h or d (e.g. 'in {digits}m')"
            )
        unit = _UNITS.get(name)
        if unit is None:
            raise WhenError(f"{field}: unknown unit {name!r}; use s, m, h or d ({_EXAMPLES})")
        if unit in seen:
            raise WhenError(f"{field}: the unit {unit!r} appears twice in {text.strip()[:64]!r}")
        if seen and _ORDER.index(unit) < _ORDER.index(seen[-1]):
            raise WhenError(
                f"{field}: write units from largest to smallest, e.g. 'in 1h30m' not 'in 30m1h'"
            )
        if len(digits.lstrip("0")) > _MAX_DIGITS:
            raise WhenError(f"{field}: {digits[:20]}{unit} is too far in the future")
        seen.append(unit)
        total += int(digits) * _SECONDS[unit]
        pos = match.end()
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise WhenError(f"{field}: {text.strip()[:64]!r} is too far in the future") from None


def parse_when(text: str, now: datetime, *, field: str = "--at") -> datetime:
    """The UTC time `text` names, relative times counted from `now` (which must be aware)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    stripped = text.strip()
    lowered = stripped.lower()
    if not lowered:
        raise WhenError(
            f"{field} is empty; give an RFC 3339 time with offset, 'now', 'in 5m' or '+5m'"
        )
    if lowered == "now":
        return _utc(now, stripped, field)
    if lowered.startswith("+"):
        delta = parse_duration(stripped[1:], field)
    elif _IN.match(lowered):
        delta = parse_duration(stripped[2:], field)
    elif lowered.startswith("-"):
        raise WhenError(
            f"{field}: relative times count forward ('in 5m' or '+5m'); for a time in the "
            "past give it in RFC 3339, e.g. 2026-11-27T03:31:57Z"
        )
    elif _looks_like_duration(lowered):
        raise WhenError(f"{field}: {stripped[:64]!r} is a duration; did you mean 'in {stripped}'?")
    elif not any(c.isdigit() for c in lowered):
        raise WhenError(
            f"{field}: cannot read {stripped[:64]!r}; give an RFC 3339 time with offset "
            f"(2026-11-27T03:31:57Z), 'now', or a time from now ({_EXAMPLES})"
        )
    else:
        return parse_time(stripped, field)
    try:
        return _utc(now, stripped, field) + delta
    except OverflowError:
        raise WhenError(f"{field}: {stripped[:64]!r} is too far in the future") from None


def _utc(now: datetime, text: str, field: str) -> datetime:
    try:
        return now.astimezone(UTC)
    except OverflowError:
        raise WhenError(f"{field}: {text[:64]!r} is out of range") from None


def _looks_like_duration(lowered: str) -> bool:
    try:
        parse_duration(lowered)
    except WhenError:
        return False
    return True
