"""What a task is, and how a request to create one is checked.

`parse_new_task` is the single place where client input becomes a `NewTask`: every rule of
the HTTP contract about fields lives here, so the scheduler and the CLI agree, and so the
rules can be property-tested without a server.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from tm.core.timefmt import TimeFormatError, parse_time

MAX_COMMAND_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200
MAX_BATCH = 10_000
MAX_ATTEMPTS_LIMIT = 100
MAX_TIMEOUT_S = 7 * 24 * 3600.0
# Times outside this range are refused: the extremes of Python's datetime are stored by
# the driver as ±infinity, and nobody schedules work before 1970.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class Status(StrEnum):
    SCHEDULED = "scheduled"
    PICKED = "picked"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
HELD = frozenset({Status.PICKED, Status.RUNNING})

TASK_FIELDS = (
    "task_id",
    "command",
    "status",
    "scheduled_at",
    "created_at",
    "picked_at",
    "started_at",
    "completed_at",
    "failed_at",
    "cancelled_at",
    "attempt",
    "max_attempts",
    "worker_id",
    "exit_code",
    "output",
    "error",
)

_KNOWN_FIELDS = frozenset(
    {"command", "scheduled_at", "max_attempts", "timeout_s", "idempotency_key", "at_most_once"}
)


class InvalidInput(ValueError):
    """Client input that cannot be accepted. `str(exc)` is the message for a person."""


class NewTask(NamedTuple):
    """A validated request to create a task. `scheduled_at` None means "now" (database time).

    A NamedTuple: immutable, and cheap to make 10,000 times for a batch.
    """

    task_id: uuid.UUID
    command: str
    scheduled_at: datetime | None
    max_attempts: int = 1
    timeout_s: float | None = None
    idempotency_key: str | None = None
    at_most_once: bool = False


def _is_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (a JSON "\\ud800" escape parses to one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return value


def parse_new_tasks(
    bodies: Sequence[object], new_ids: Sequence[uuid.UUID], first_index: int = 0
) -> list[NewTask]:
    """Check a batch (or the slice of one starting at `first_index`); the first bad task
    raises InvalidInput prefixed with its index in the batch.

    Times repeated across the batch (a batch often shares one) are parsed once.
    """
    times: dict[str, datetime] = {}
    tasks = []
    for index, (body, new_id) in enumerate(zip(bodies, new_ids, strict=True), first_index):
        try:
            tasks.append(parse_new_task(body, new_id, times))
        except InvalidInput as exc:
            raise InvalidInput(f"tasks[{index}]: {exc}") from None
    return tasks


def parse_new_task(
    body: object, new_id: uuid.UUID, times: dict[str, datetime] | None = None
) -> NewTask:
    """Check one task object from a request body. Raises InvalidInput naming the problem.

    `times` caches parsed `scheduled_at` strings across the tasks of one batch.
    """
    if not isinstance(body, dict):
        raise InvalidInput("a task must be a JSON object")
    if not _KNOWN_FIELDS.issuperset(body):
        unknown = sorted(set(body) - _KNOWN_FIELDS)
        raise InvalidInput(f"unknown field(s): {', '.join(repr(k) for k in unknown[:5])}")

    command = body.get("command")
    if command is None:
        raise InvalidInput("command is required")
    if not isinstance(command, str):
        raise InvalidInput("command must be a string")
    if not command or command.isspace():
        raise InvalidInput("command must not be empty")
    if "\x00" in command:
        raise InvalidInput("command must not contain NUL characters")
    try:
        # ASCII (most commands) is one byte a character: no need to encode it to count
        size = len(command) if command.isascii() else len(command.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates (a JSON "\ud800" escape parses to one)
        if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
            raise InvalidInput(f"command is longer than {MAX_COMMAND_BYTES} bytes") from None
        raise InvalidInput("command is not valid Unicode text") from None
    if size > MAX_COMMAND_BYTES:
        raise InvalidInput(f"command is longer than {MAX_COMMAND_BYTES} bytes")

    raw_at = body.get("scheduled_at")
    scheduled_at: datetime | None = None
    if raw_at is not None:
        if not isinstance(raw_at, str):
            raise InvalidInput("scheduled_at must be a string such as 2026-11-27T03:31:57Z")
        scheduled_at = times.get(raw_at) if times is not None else None
        if scheduled_at is None:
            try:
                scheduled_at = parse_time(raw_at, "scheduled_at")
            except TimeFormatError as exc:
                raise InvalidInput(str(exc)) from None
            if not EARLIEST <= scheduled_at < LATEST:
                raise InvalidInput(
                    "scheduled_at must be between 1970-01-01 and 9999-01-01 (UTC)")
            if times is not None and len(times) < 64:
                times[raw_at] = scheduled_at

    max_attempts = _int_field(body, "max_attempts", 1, 1, MAX_ATTEMPTS_LIMIT)

    timeout_s: float | None = None
    raw_timeout = body.get("timeout_s")
    if raw_timeout is not None:
        if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float):
            raise InvalidInput("timeout_s must be a number of seconds")
        try:
            timeout_s = float(raw_timeout)
        except OverflowError:
            timeout_s = math.inf
        if not math.isfinite(timeout_s) or timeout_s <= 0 or timeout_s > MAX_TIMEOUT_S:
            raise InvalidInput(f"timeout_s must be greater than 0 and at most {MAX_TIMEOUT_S:g}")

    key = body.get("idempotency_key")
    if key is not None:
        if not isinstance(key, str):
            raise InvalidInput("idempotency_key must be a string")
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        if "\x00" in key:
            raise InvalidInput("idempotency_key must not contain NUL characters")
        if not _is_unicode(key):
            raise InvalidInput("idempotency_key is not valid Unicode text")

    at_most_once = body.get("at_most_once", False)
    if at_most_once is None:
        at_most_once = False
    if not isinstance(at_most_once, bool):
        raise InvalidInput("at_most_once must be true or false")

    # positional: a batch makes 10,000
    return NewTask(new_id, command, scheduled_at, max_attempts, timeout_s, key, at_most_once)


def parse_task_id(raw: object) -> uuid.UUID:
    """A task id from a URL or query string; InvalidInput when missing or malformed."""
    if raw is None or raw == "":
        raise InvalidInput("task_id is required")
    if not isinstance(raw, str):
        raise InvalidInput("task_id must be a string")
    try:
        return uuid.UUID(raw.strip())
    except ValueError:
        raise InvalidInput(f"task_id is not a valid UUID: {raw[:64]!r}") from None
