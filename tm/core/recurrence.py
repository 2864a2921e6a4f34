"""When a recurring schedule fires: cron expressions in a time zone, and fixed intervals.

Pure: time is an argument, instants are aware `datetime`s in UTC, in and out.

Expressions (`parse_recurrence`):

* cron with 5 fields (`minute hour day-of-month month day-of-week`) or 6 (seconds first:
  `*/10 * * * * *`), parsed and matched by the `cronsim` library, evaluated on the wall
  clock of an IANA time zone (`zoneinfo`);
* the macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`;
* `@every <duration>` (`30s`, `5m`, `1h30m`, `2d`: the durations of `tm submit --at 'in ...'`;
  at least 1 s): the instants `1970-01-01T00:00:00Z + k * duration`. Real elapsed time, so
  never affected by DST; the time zone plays no part (every coordinator derives the same
  instants, no state needed).

How wall-clock times become instants (the rules of this module, tested in
tests/unit/test_recurrence.py):

1. A wall-clock time that exists once fires at that instant.
2. A wall-clock time repeated by a fall-back transition fires once, at its first occurrence
   (the earlier instant, `fold=0`). The repeated hour's second pass fires nothing.
3. A wall-clock time skipped by a spring-forward transition fires once, at the next valid
   instant: the transition itself (Europe/Berlin's `30 2 * * *` on the last Sunday of March
   fires at 03:00 CEST). Several skipped times that match collapse into that one firing.

So the fire times of a schedule strictly increase and no instant is produced twice.

Why this works: cronsim enumerates matching *naive* wall-clock times in order; the map from
a wall-clock time to its instant (rules 1-3) never decreases. The forward iteration for
"fires after t" therefore starts at the largest wall-clock time whose instant is <= t, and
skips runs of skipped times by jumping to the end of the gap.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from tm.core.tasks import LATEST, InvalidInput
from tm.core.timefmt import from_micros, to_micros
from tm.core.when import WhenError, parse_duration

MAX_EXPRESSION = 200
MAX_TIMEZONE = 64
MIN_EVERY_S = 1
MAX_EVERY_S = 366 * 86_400
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*$")
_CRON_HELP = (
    "cron takes 5 fields (minute hour day-of-month month day-of-week), 6 with seconds "
    "first, a macro such as @daily, or @every <duration>"
)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """A validated expression in a time zone. Exactly one of `cron`, `every_s` is set."""

    expression: str  # as the client wrote it (surrounding blanks removed)
    timezone: str
    cron: str | None  # the cron fields, macros expanded
    every_s: int | None  # the interval of `@every`, seconds

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_timezone(raw: object) -> str:
    """An IANA time zone name (`Europe/Berlin`, `UTC`); InvalidInput naming the problem."""
    if raw is None:
        return "UTC"
    if not isinstance(raw, str):
        raise InvalidInput("timezone must be a string such as Europe/Berlin or UTC")
    if not raw or len(raw) > MAX_TIMEZONE or not _ZONE_NAME.match(raw) or (
        raw not in _known_zones()
    ):
        raise InvalidInput(
            f"timezone {raw[:MAX_TIMEZONE]!r} is not a known IANA time zone "
            "(e.g. Europe/Berlin, America/New_York, UTC)"
        )
    return raw


def parse_every(text: str) -> int:
    """The duration of `@every <duration>` in whole seconds (the `tm submit --at` grammar of
    tm.core.when: `30s`, `5m`, `1h30m`, `2d`); InvalidInput otherwise."""
    try:
        seconds = parse_duration(text, field="@every") // _SECOND
    except WhenError:
        raise InvalidInput(
            f"cron '@every {text.strip()[:40]}' needs a duration such as 30s, 5m, 1h30m or 1d "
            "(whole numbers, largest unit first)"
        ) from None
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise InvalidInput(
            f"cron @every must be between {MIN_EVERY_S} s and {MAX_EVERY_S // 86_400} days"
        )
    return seconds


def parse_recurrence(expression: object, timezone: object = None) -> Recurrence:
    """Check a `cron` value and a `timezone` value; InvalidInput names the field at fault."""
    zone = parse_timezone(timezone)
    if expression is None:
        raise InvalidInput("cron is required, e.g. '*/5 * * * *' or '@every 30s'")
    if not isinstance(expression, str):
        raise InvalidInput("cron must be a string such as '*/5 * * * *'")
    text = " ".join(expression.split())
    if not text:
        raise InvalidInput(f"cron must not be empty; {_CRON_HELP}")
    if len(text) > MAX_EXPRESSION or not text.isascii() or not text.isprintable():
        raise InvalidInput(f"cron must be at most {MAX_EXPRESSION} printable ASCII characters")
    lowered = text.lower()
    if lowered.startswith("@every"):
        return Recurrence(text, zone, None, parse_every(text[len("@every"):]))
    if lowered.startswith("@"):
        cron = MACROS.get(lowered)
        if cron is None:
            raise InvalidInput(
                f"cron {text!r} is not a known macro; use one of {', '.join(MACROS)} "
                "or @every <duration>"
            )
    else:
        cron = text
    try:
        CronSim(cron, datetime(2000, 1, 1))
    except CronSimError as exc:
        problem = str(exc).lower()
        raise InvalidInput(f"cron {text!r} is not valid: {problem}; {_CRON_HELP}") from None
    return Recurrence(text, zone, cron, None)


# ---------------------------------------------------------------------------- wall clock


def _check_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("instants must be aware datetimes")


def _wall(zone: ZoneInfo, instant: datetime) -> datetime:
    """The naive wall-clock time of `instant` in `zone`, to the second (floored)."""
    return instant.astimezone(zone).replace(tzinfo=None, microsecond=0, fold=0)


def _instant(zone: ZoneInfo, wall: datetime) -> tuple[datetime, bool]:
    """The instant a wall-clock time fires at (rules 1-3), and whether it was skipped."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(zone, first) == wall:
        return first, False
    # Skipped by a transition: fold=1 reads it with the offset after the transition, which
    # lands before it; fold=0 (`first`) lands after. The transition is the first whole
    # second in between whose wall-clock time is past `wall`.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    if _wall(zone, low) > wall:  # pragma: no cover - not seen in tzdata; be safe anyway
        low = first - timedelta(days=2)
    while high - low > _SECOND:
        middle = low + timedelta(seconds=(high - low) // _SECOND // 2)
        if _wall(zone, middle) > wall:
            high = middle
        else:
            low = middle
    return high, True


def _start_wall(zone: ZoneInfo, after: datetime) -> datetime:
    """The largest wall-clock time whose instant is <= `after` (see the module docstring)."""
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None, microsecond=0, fold=0)
    if not local.fold:
        return wall
    # `after` is in the second pass of a repeated hour: every repeated wall-clock time
    # fired in the first pass, before `after`. Find where the repetition ends.
    first_offset, offset = local.replace(fold=0).utcoffset(), local.utcoffset()
    assert first_offset is not None and offset is not None
    shift = first_offset - offset
    low = after.replace(microsecond=0)
    high = low + shift + _SECOND
    while high.astimezone(zone).fold:  # pragma: no cover - back-to-back transitions
        high += shift
    while high - low > _SECOND:
        middle = low + timedelta(seconds=(high - low) // _SECOND // 2)
        if middle.astimezone(zone).fold:
            low = middle
        else:
            high = middle
    return _wall(zone, high) - _SECOND


# ---------------------------------------------------------------------------- fire times


def fires_after(rec: Recurrence, after: datetime) -> Iterator[datetime]:
    """Every fire time strictly after `after`, in increasing order (ends before year 9999)."""
    _check_aware(after)
    after = after.astimezone(UTC)
    if rec.every_s is not None:
        step = rec.every_s * 1_000_000
        micros = (to_micros(after) // step + 1) * step
        while True:
            instant = from_micros(micros)
            if instant >= LATEST:
                return
            yield instant
            micros += step
    assert rec.cron is not None
    zone = rec.zone
    last = after
    wall = _start_wall(zone, after)
    while True:
        walls = CronSim(rec.cron, wall)
        while True:
            try:
                candidate = next(walls)
            except (StopIteration, OverflowError):
                return
            instant, skipped = _instant(zone, candidate)
            if instant >= LATEST:
                return
            if instant <= last:  # pragma: no cover - the start wall rules this out
                continue
            yield instant
            last = instant
            if skipped:
                # The rest of the gap would fire at this same instant: resume after it.
                wall = _wall(zone, instant)
                break


def next_fire(rec: Recurrence, after: datetime) -> datetime | None:
    """The first fire time strictly after `after`; None if there is none before 9999."""
    return next(fires_after(rec, after), None)


def fires_between(
    rec: Recurrence, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """Fire times in `(after, until]`, oldest first, at most `limit` of them."""
    out: list[datetime] = []
    if limit <= 0:
        return out
    for instant in fires_after(rec, after):
        if instant > until:
            break
        out.append(instant)
        if len(out) >= limit:
            break
    return out


def count_between(rec: Recurrence, after: datetime, until: datetime, cap: int) -> int:
    """How many fire times lie in `(after, until]`, counting at most `cap`."""
    if until <= after:
        return 0
    if rec.every_s is not None:
        step = rec.every_s * 1_000_000
        return min(cap, to_micros(until) // step - to_micros(after) // step)
    return len(fires_between(rec, after, until, cap))


def prev_fire(rec: Recurrence, at: datetime) -> datetime | None:
    """The latest fire time at or before `at`; None if there is none (within 50 years)."""
    _check_aware(at)
    at = at.astimezone(UTC)
    if rec.every_s is not None:
        step = rec.every_s * 1_000_000
        return from_micros(to_micros(at) // step * step)
    assert rec.cron is not None
    zone = rec.zone
    walls = CronSim(rec.cron, _start_wall(zone, at) + _SECOND, reverse=True)
    try:
        wall = next(walls)
    except (StopIteration, OverflowError):
        return None
    return _instant(zone, wall)[0]


def first_fire_from(rec: Recurrence, start: datetime) -> datetime | None:
    """The first fire time at or after `start`."""
    return next_fire(rec, start - _MICROSECOND)

