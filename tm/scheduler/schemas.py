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

from tm.core.tasks import (
    MAX_ATTEMPTS_LIMIT,
    MAX_BATCH,
    MAX_COMMAND_BYTES,
    MAX_IDEMPOTENCY_KEY,
    MAX_TIMEOUT_S,
)

StatusName = Literal["scheduled", "picked", "running", "completed", "failed", "cancelled"]


class OpenAPI(OpenAPIProvider):
    """Path parameters named task_id are UUIDs (Quart's converter is a plain string, so
    that a malformed id can be answered with a 400 that says so rather than a 404)."""

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if name == "task_id":
            parameter["schema"] = {"type": "string", "format": "uuid"}
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


class Created(RootModel[Task | TaskBatch]):
    """The new task, or {"tasks": [...]} in input order for a batch."""
