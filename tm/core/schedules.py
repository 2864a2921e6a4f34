"""Recurring schedules: what a client may send, and which occurrences become tasks.

`parse_new_schedule` / `parse_schedule_patch` are the only places client input becomes a
schedule; the task fields (command, max_attempts, timeout_s, at_most_once) follow exactly
the rules of `tm.core.tasks.parse_new_task`, which they call.

`plan_occurrences` decides, for one schedule at time `now`, which due occurrences run:

* An occurrence is *due* once its fire time has passed. It is *on time* while it is at most
  `grace` old; older due occurrences were *missed* (nothing was running to create them).
* `catch_up` decides about missed ones: `none` drops them, `latest` runs the most recent of
  them once (unless an on-time occurrence runs anyway), `all` runs every one, oldest first.
* `overlap: skip` runs no occurrence while an earlier run of the schedule is unfinished, and
  at most one per round; the others are skipped for good (counted, not deferred).
* At most `limit` occurrences are considered per call; `more` says the caller should go
  again at once (a long backlog under `catch_up: all`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from tm.core.recurrence import (
    Recurrence,
    count_between,
    fires_between,
    first_fire_from,
    next_fire,
    parse_recurrence,
    prev_fire,
)
from tm.core.tasks import InvalidInput, parse_new_task

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)
MISSED_COUNT_CAP = 10_000
_MICROSECOND = timedelta(microseconds=1)


class Overlap(StrEnum):
    ALLOW = "allow"
    SKIP = "skip"


class CatchUp(StrEnum):
    NONE = "none"
    LATEST = "latest"
    ALL = "all"


DEFAULT_OVERLAP = Overlap.ALLOW
DEFAULT_CATCH_UP = CatchUp.LATEST

SCHEDULE_FIELDS = (
    "name",
    "cron",
    "timezone",
    "command",
    "max_attempts",
    "timeout_s",
    "at_most_once",
    "overlap",
    "catch_up",
    "paused",
    "created_at",
    "updated_at",
    "next_fire_at",
    "last_fire_at",
    "skipped_runs",
    "missed_runs",
)
_EDITABLE = frozenset(
    {"cron", "timezone", "command", "max_attempts", "timeout_s", "at_most_once", "overlap",
     "catch_up", "paused"}
)
_TASK_FIELDS = ("command", "max_attempts", "timeout_s", "at_most_once")


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A validated schedule definition (what a client can set)."""

    name: str
    recurrence: Recurrence
    command: str
    max_attempts: int = 1
    timeout_s: float | None = None
    at_most_once: bool = False
    overlap: Overlap = DEFAULT_OVERLAP
    catch_up: CatchUp = DEFAULT_CATCH_UP
    paused: bool = False

    @property
    def cron(self) -> str:
        return self.recurrence.expression

    @property
    def timezone(self) -> str:
        return self.recurrence.timezone


def parse_schedule_name(raw: object) -> str:
    if raw is None or raw == "":
        raise InvalidInput("name is required")
    if not isinstance(raw, str):
        raise InvalidInput("name must be a string")
    if not _NAME.match(raw):
        raise InvalidInput(
            f"name {raw[:120]!r} is not valid: 1-100 characters of letters, digits, '_', '.' "
            "and '-', starting with a letter or digit"
        )
    return raw


def _choice(body: dict[str, Any], field: str, kind: type[StrEnum], default: StrEnum) -> Any:
    value = body.get(field)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(k.value) for k in kind)
        raise InvalidInput(f"{field} must be one of {allowed}") from None


def _bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false")
    return value


def _spec(name: str, body: dict[str, Any]) -> ScheduleSpec:
    recurrence = parse_recurrence(body.get("cron"), body.get("timezone"))
    task = parse_new_task({k: body[k] for k in _TASK_FIELDS if k in body}, uuid.UUID(int=0))
    return ScheduleSpec(
        name=name,
        recurrence=recurrence,
        command=task.command,
        max_attempts=task.max_attempts,
        timeout_s=task.timeout_s,
        at_most_once=task.at_most_once,
        overlap=_choice(body, "overlap", Overlap, DEFAULT_OVERLAP),
        catch_up=_choice(body, "catch_up", CatchUp, DEFAULT_CATCH_UP),
        paused=_bool(body, "paused"),
    )


def parse_new_schedule(body: object) -> ScheduleSpec:
    """Check a `POST /schedules` body. Raises InvalidInput naming the problem."""
    if not isinstance(body, dict):
        raise InvalidInput("a schedule must be a JSON object")
    unknown = sorted(set(body) - _EDITABLE - {"name"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(repr(k) for k in unknown[:5])}")
    return _spec(parse_schedule_name(body.get("name")), body)


@dataclass(frozen=True, slots=True)
class Edit:
    """A PATCH applied to a stored schedule: the new definition and what changed."""

    spec: ScheduleSpec
    changed: bool
    timing_changed: bool  # cron or timezone: the next fire time must be recomputed
    resumed: bool
    paused: bool


def spec_fields(spec: ScheduleSpec) -> dict[str, Any]:
    """The editable fields of `spec` as stored and shown."""
    return {
        "cron": spec.cron,
        "timezone": spec.timezone,
        "command": spec.command,
        "max_attempts": spec.max_attempts,
        "timeout_s": spec.timeout_s,
        "at_most_once": spec.at_most_once,
        "overlap": spec.overlap.value,
        "catch_up": spec.catch_up.value,
        "paused": spec.paused,
    }


def parse_schedule_patch(current: Mapping[str, Any], body: object) -> Edit:
    """Apply a `PATCH /schedules/<name>` body (any subset of the editable fields) to the
    stored fields `current`; the result is checked as a whole, like a new schedule."""
    if not isinstance(body, dict):
        raise InvalidInput("a schedule change must be a JSON object")
    name = current["name"]
    if "name" in body and body["name"] != name:
        raise InvalidInput("name cannot be changed; create a new schedule instead")
    unknown = sorted(set(body) - _EDITABLE - {"name"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(repr(k) for k in unknown[:5])}")
    for field in ("cron", "command"):
        if field in body and body[field] is None:
            raise InvalidInput(f"{field} cannot be null")
    before = {k: current[k] for k in _EDITABLE}
    spec = _spec(name, {**before, **{k: v for k, v in body.items() if k != "name"}})
    after = spec_fields(spec)
    return Edit(
        spec=spec,
        changed=after != before,
        timing_changed=(after["cron"], after["timezone"]) != (before["cron"], before["timezone"]),
        resumed=before["paused"] and not spec.paused,
        paused=spec.paused and not before["paused"],
    )


def first_fire_at(spec: ScheduleSpec, now: datetime) -> datetime | None:
    """The next fire time of a schedule created, resumed or re-timed at `now` (None: paused,
    or it never fires again). Occurrences before `now` are never run for it."""
    if spec.paused:
        return None
    return next_fire(spec.recurrence, now)


def check_fires(spec: ScheduleSpec, now: datetime) -> None:
    """InvalidInput if the expression has no fire time after `now` (e.g. `0 0 30 2 *`)."""
    if next_fire(spec.recurrence, now) is None:
        raise InvalidInput(f"cron {spec.cron!r} never fires after {now.year}")


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a schedule's due occurrences this round."""

    run: tuple[datetime, ...]  # fire times to create tasks for, oldest first
    skipped: int  # due occurrences not run because of overlap=skip
    missed: int  # due occurrences dropped by catch_up (counted up to MISSED_COUNT_CAP)
    next_fire_at: datetime | None  # the first occurrence not decided yet
    more: bool  # `limit` was reached: plan again at once


def plan_occurrences(
    recurrence: Recurrence,
    next_fire_at: datetime,
    now: datetime,
    *,
    catch_up: CatchUp,
    overlap: Overlap,
    unfinished_run: bool,
    grace: timedelta,
    limit: int = 1000,
) -> Plan:
    """Decide about every occurrence in `[next_fire_at, now]` (see the module docstring).

    `next_fire_at` is a fire time of `recurrence`, the first one not yet decided;
    `unfinished_run` says whether an earlier run of the schedule has not finished.
    """
    if next_fire_at > now:
        return Plan((), 0, 0, next_fire_at, False)
    limit = max(1, limit)
    # catch_up=all treats every due occurrence as on time.
    on_time_from = next_fire_at if catch_up is CatchUp.ALL else max(next_fire_at, now - grace)
    # On-time occurrences: the fire times in [on_time_from, now].
    on_time: list[datetime] = []
    first: datetime | None = next_fire_at
    if on_time_from > next_fire_at:
        first = first_fire_from(recurrence, on_time_from)
    if first is not None and first <= now:
        on_time = [first, *fires_between(recurrence, first, now, limit - 1)]
    more = False
    if len(on_time) >= limit:
        following = next_fire(recurrence, on_time[-1])
        more = following is not None and following <= now
    chosen = list(on_time)
    missed = 0
    if on_time_from > next_fire_at:
        # [next_fire_at, on_time_from) were missed.
        missed = 1 + count_between(
            recurrence, next_fire_at, on_time_from - _MICROSECOND, MISSED_COUNT_CAP - 1
        )
        if catch_up is CatchUp.LATEST and not chosen:
            latest = prev_fire(recurrence, on_time_from - _MICROSECOND)
            if latest is not None and latest >= next_fire_at:
                chosen = [latest]
                missed -= 1
    skipped = 0
    if overlap is Overlap.SKIP:
        if unfinished_run:
            skipped, chosen = len(chosen), []
        else:
            skipped, chosen = max(0, len(chosen) - 1), chosen[:1]
    following_fire = next_fire(recurrence, on_time[-1] if more else now)
    return Plan(tuple(chosen), skipped, missed, following_fire, more)
