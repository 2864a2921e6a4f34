"""What DESIGN.md "HTTP API (contract)" promises a client, as assertions on responses.

Written from the contract text, not imported from `tm`, so a change in the app that breaks
the contract breaks these tests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

TASK_FIELDS = frozenset(
    {
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
    }
)
TIME_FIELDS = frozenset(
    {
        "scheduled_at",
        "created_at",
        "picked_at",
        "started_at",
        "completed_at",
        "failed_at",
        "cancelled_at",
    }
)
STATUSES = frozenset({"scheduled", "picked", "running", "completed", "failed", "cancelled"})
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

# Fields that are null on a task nobody has picked or cancelled yet.
UNSET_WHEN_SCHEDULED = (
    "picked_at",
    "started_at",
    "completed_at",
    "failed_at",
    "cancelled_at",
    "worker_id",
    "exit_code",
    "output",
    "error",
)

T = TypeVar("T")

# Any identifier the server cannot know.
UNKNOWN_ID = "6f1c1a9e-3c9b-4d47-9a43-2f1f6c1e8b55"


def assert_json(response: httpx.Response) -> Any:
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/json", (
        f"{response.status_code} has content type {content_type!r}: {response.text[:300]}"
    )
    assert "Traceback" not in response.text
    return response.json()


def assert_task(task: Any) -> dict[str, Any]:
    """Every contract field present (unset ones null), times in the contract format."""
    assert isinstance(task, dict), task
    assert set(task) == TASK_FIELDS, f"fields differ: {sorted(set(task) ^ TASK_FIELDS)}"
    assert str(uuid.UUID(task["task_id"])) == task["task_id"]
    assert isinstance(task["command"], str) and task["command"]
    assert task["status"] in STATUSES
    for field in TIME_FIELDS:
        value = task[field]
        assert value is None or (isinstance(value, str) and TIME_RE.match(value)), (field, value)
    assert task["scheduled_at"] is not None
    assert task["created_at"] is not None
    assert isinstance(task["attempt"], int) and not isinstance(task["attempt"], bool)
    assert isinstance(task["max_attempts"], int) and task["max_attempts"] >= 1
    return task


def assert_new_task(task: Any) -> dict[str, Any]:
    """A task as it is right after it was created: scheduled, never dispatched."""
    assert_task(task)
    assert task["status"] == "scheduled"
    assert task["attempt"] == 0
    for field in UNSET_WHEN_SCHEDULED:
        assert task[field] is None, (field, task[field])
    return task


def task_response(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    return assert_task(assert_json(response))


def assert_error(response: httpx.Response, status: int, *mentions: str) -> str:
    """`{"error": "<for a person>"}` with `status`, mentioning each of `mentions` (any case)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = assert_json(response)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip(), body
    for word in mentions:
        assert word.lower() in message.lower(), f"{word!r} not in error {message!r}"
    return message


def assert_error_mentions_any(message: str, *words: str) -> None:
    assert any(w.lower() in message.lower() for w in words), (words, message)


async def list_all(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every task GET /tasks returns, following `next` to the end."""
    tasks: list[dict[str, Any]] = []
    after = None
    for _ in range(10_000):
        query = {**params, **({"after": after} if after else {})}
        response = await client.get("/tasks", params=query)
        assert response.status_code == 200, response.text[:500]
        page = assert_json(response)
        assert set(page) == {"tasks", "next"}, page.keys()
        tasks += [assert_task(t) for t in page["tasks"]]
        after = page["next"]
        if after is None:
            return tasks
        assert isinstance(after, str) and after
    raise AssertionError("pagination does not end")


async def newest_task_id(client: httpx.AsyncClient) -> str | None:
    """The id of the most recently created task (None when there is none).

    Tests on the session's shared database check "nothing was stored" by comparing this
    before and after a request: the tests of a session run one at a time, and nothing but
    the test's own server writes to that database.
    """
    response = await client.get("/tasks", params={"limit": 1})
    assert response.status_code == 200, response.text[:500]
    tasks = assert_json(response)["tasks"]
    return tasks[0]["task_id"] if tasks else None


async def each_case(cases: Mapping[str, T], check: Callable[[T], Awaitable[object]]) -> None:
    """Run `check` on every case against the same server; fail listing every failing case."""
    failures = []
    for name, case in cases.items():
        try:
            await check(case)
        except AssertionError as exc:
            failures.append(f"[{name}] " + " | ".join(str(exc).strip().splitlines())[:600])
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
