"""Request and response schemas of the HTTP API, for the OpenAPI document only.

Validation itself is tm.core.tasks (one set of rules, property-tested, and bodies read as
JSON whatever their Content-Type); these models describe the same contract to clients and
to schemathesis, which checks that the server keeps to it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from quart_schema import OpenAPIProvider
from werkzeug.routing.converters import BaseConverter

from tm.core.recurrence import MAX_EXPRESSION, MAX_TIMEZONE
from tm.core.schedules import NAME_PATTERN
from tm.core.tasks import (
    MAX_ATTEMPTS_LIMIT,
    MAX_BATCH,
    MAX_COMMAND_BYTES,
    MAX_IDEMPOTENCY_KEY,
    MAX_TIMEOUT_S,
)

StatusName = Literal["scheduled", "picked", "running", "completed", "failed", "cancelled"]


class OpenAPI(OpenAPIProvider):
    """Path parameters named task_id are UUIDs, and `name` is a schedule name (Quart's
    converter is a plain string, so that a malformed one can be answered with a 400 that
    says so rather than a 404)."""

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if name == "task_id":
            parameter["schema"] = {"type": "string", "format": "uuid"}
        elif name == "name":
            parameter["schema"] = {"type": "string", "pattern": NAME_PATTERN}
        return parameter


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1, max_length=MAX_COMMAND_BYTES, pattern=r"\S",
                         description="What to run; at most 64 KiB of UTF-8.")
    scheduled_at: datetime | None = Field(
        None, description="RFC 3339 with an offset (naive times are refused); default: now.")
    max_attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS_LIMIT,
                              description="Executions allowed while they fail.")
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S,
                                    description="Execution deadline, seconds.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY,
        description="A repeat with a known key returns the existing task.")
    at_most_once: bool = Field(False, description="Never re-run after a lost worker.")


class TaskBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, max_length=MAX_BATCH)


class CreateTasks(RootModel[TaskIn | TaskBatchIn]):
    """One task, or {"tasks": [...]} for a batch (all or nothing)."""


class Task(BaseModel):
    task_id: str = Field(description="UUID")
    command: str
    status: StatusName
    scheduled_at: str
    created_at: str
    picked_at: str | None
    started_at: str | None
    completed_at: str | None
    failed_at: str | None
    cancelled_at: str | None
    attempt: int
    max_attempts: int
    worker_id: str | None
    exit_code: int | None
    output: str | None
    error: str | None


class TaskBatch(BaseModel):
    tasks: list[Task]


class TaskPage(BaseModel):
    tasks: list[Task]
    next: str | None = Field(description="Pass back as `after` for the next page.")


class Worker(BaseModel):
    worker_id: str
    address: str
    state: Literal["active", "draining"]
    capacity: int
    free_slots: int
    last_heartbeat_at: str | None


class WorkerList(BaseModel):
    workers: list[Worker]


class Error(BaseModel):
    error: str = Field(description="What is wrong, for a person.")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    database_ms: float


class StatusQuery(BaseModel):
    task_id: uuid.UUID = Field(description="UUID of the task.")


class ListQuery(BaseModel):
    status: StatusName | None = None
    limit: int = Field(100, ge=1, le=1000)
    after: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                              description="The `next` cursor of the previous page.")


class TaskRef(BaseModel):
    """With `Prefer: return=minimal`: only the task's id."""

    task_id: str = Field(description="UUID")


class TaskIds(BaseModel):
    """With `Prefer: return=minimal`: a batch's task ids, in input order."""

    task_ids: list[str] = Field(description="UUIDs")


class Created(RootModel[Task | TaskBatch | TaskRef | TaskIds]):
    """The new task, or {"tasks": [...]} in input order for a batch; with
    `Prefer: return=minimal`, {"task_id"} or {"task_ids": [...]}."""


class Existing(RootModel[Task | TaskRef]):
    """A repeated idempotency_key: the existing task ({"task_id"} with
    `Prefer: return=minimal`)."""


class PreferHeader(BaseModel):
    prefer: str | None = Field(
        None,
        description="`return=minimal` (RFC 7240): answer only the task ids — for a "
        "batch, ~40 bytes a task instead of ~360. The answer then carries "
        "`Preference-Applied: return=minimal`.",
    )


# ---------------------------------------------------------------------------- schedules

OverlapName = Literal["allow", "skip"]
CatchUpName = Literal["none", "latest", "all"]


class ScheduleFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(
        min_length=1, max_length=MAX_EXPRESSION,
        description="5 fields (minute hour day-of-month month day-of-week), 6 with seconds "
        "first, @hourly/@daily/@weekly/@monthly/@yearly, or '@every 30s'.")
    timezone: str = Field("UTC", max_length=MAX_TIMEZONE,
                          description="IANA time zone the cron fields are read in.")
    command: str = Field(min_length=1, max_length=MAX_COMMAND_BYTES, pattern=r"\S",
                         description="What each run executes.")
    max_attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)
    at_most_once: bool = False
    overlap: OverlapName = Field(
        "allow", description="skip: no run starts while the previous one is unfinished.")
    catch_up: CatchUpName = Field(
        "latest", description="Occurrences missed while no coordinator ran: none, the latest "
        "once, or all.")
    paused: bool = False


class ScheduleIn(ScheduleFields):
    name: str = Field(pattern=NAME_PATTERN, description="Unique; letters, digits, _ . -")


class SchedulePatch(BaseModel):
    """Any subset of the editable fields; changing cron or timezone, or resuming, moves the
    next run to the first fire time after now."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(None, min_length=1, max_length=MAX_EXPRESSION)
    timezone: str | None = Field(None, max_length=MAX_TIMEZONE)
    command: str | None = Field(None, min_length=1, max_length=MAX_COMMAND_BYTES,
                                pattern=r"\S")
    max_attempts: int | None = Field(None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)
    at_most_once: bool | None = None
    overlap: OverlapName | None = None
    catch_up: CatchUpName | None = None
    paused: bool | None = None


class Schedule(BaseModel):
    name: str
    cron: str
    timezone: str
    command: str
    max_attempts: int
    timeout_s: float | None
    at_most_once: bool
    overlap: OverlapName
    catch_up: CatchUpName
    paused: bool
    created_at: str
    updated_at: str
    next_fire_at: str | None = Field(description="Null while paused or when it never fires "
                                     "again.")
    last_fire_at: str | None = Field(description="The latest occurrence that became a task.")
    skipped_runs: int = Field(description="Occurrences not run: previous run unfinished.")
    missed_runs: int = Field(description="Occurrences dropped after an outage (catch_up).")


class ScheduleList(BaseModel):
    schedules: list[Schedule]
    next: str | None = Field(description="Pass back as `after` for the next page.")


class Run(Task):
    schedule: str
    fire_at: str = Field(description="The occurrence this task runs (its scheduled_at).")


class RunPage(BaseModel):
    tasks: list[Run]
    next: str | None = Field(description="Pass back as `after` for the next page.")


class ScheduleListQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000)
    after: str | None = Field(None, pattern=NAME_PATTERN,
                              description="The `next` cursor of the previous page.")
