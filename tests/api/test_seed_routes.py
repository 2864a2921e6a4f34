"""Seed-compatible routes: POST /schedule and GET /status, as the original README uses them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio

from tests.api.contract import (
    UNKNOWN_ID,
    assert_error,
    assert_json,
    assert_new_task,
    newest_task_id,
    task_response,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
README_BODY = b'{"command":"<your-command>","scheduled_at":"2023-12-25T22:34:00+05:30"}'


def parse_wire_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


async def test_readme_example_sent_like_curl_d(api: httpx.AsyncClient) -> None:
    """`curl -d '<json>'` sends a form content type; the body is still read as JSON."""
    with trio.fail_after(10):
        response = await api.post("/schedule", content=README_BODY, headers=FORM)
        task = assert_new_task(task_response(response, 200))
        assert task["command"] == "<your-command>"
        assert task["scheduled_at"] == "2023-12-25T17:04:00.000000Z"
        assert task["max_attempts"] == 1

        status = await api.get("/status", params={"task_id": task["task_id"]})
        assert task_response(status, 200) == task


@pytest.mark.parametrize(
    "command", ["echo a=b&c=d", "x=%20%26+y", "curl -d 'k=v' http://h/?q=1&r=2"]
)
async def test_form_content_type_body_is_not_form_decoded(
    api: httpx.AsyncClient, command: str
) -> None:
    with trio.fail_after(10):
        body = json.dumps({"command": command}).encode()
        response = await api.post("/schedule", content=body, headers=FORM)
        assert task_response(response, 200)["command"] == command


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=utf-8"])
async def test_any_content_type_is_read_as_json(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    with trio.fail_after(10):
        headers = {"Content-Type": content_type} if content_type else {}
        response = await api.post("/schedule", content=README_BODY, headers=headers)
        assert task_response(response, 200)["scheduled_at"] == "2023-12-25T17:04:00.000000Z"


async def test_scheduled_at_omitted_means_now(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        before = datetime.now(UTC)
        response = await api.post("/schedule", content=b'{"command": "echo now"}', headers=FORM)
        after = datetime.now(UTC)
        task = assert_new_task(task_response(response, 200))
        slack = timedelta(seconds=5)  # the database clock, not ours, stamps it
        for field in ("scheduled_at", "created_at"):
            assert before - slack <= parse_wire_time(task[field]) <= after + slack, task


async def test_optional_fields_are_accepted(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        body = {
            "command": "echo opts",
            "scheduled_at": "2030-01-01T00:00:00Z",
            "max_attempts": 3,
            "timeout_s": 2.5,
            "idempotency_key": "seed-opts",
            "at_most_once": True,
        }
        task = assert_new_task(task_response(await api.post("/schedule", json=body), 200))
        assert task["max_attempts"] == 3
        assert task["scheduled_at"] == "2030-01-01T00:00:00.000000Z"


async def test_repeated_schedule_with_idempotency_key_returns_existing_task(
    api: httpx.AsyncClient,
) -> None:
    with trio.fail_after(10):
        body = {"command": "echo once", "idempotency_key": f"seed-{uuid.uuid4()}"}
        first = task_response(await api.post("/schedule", json=body), 200)
        again = await api.post("/schedule", json={**body, "command": "echo other"})
        assert task_response(again, 200) == first
        assert await newest_task_id(api) == first["task_id"]  # no second row


@pytest.mark.parametrize("path", ["/status", "/status/"])
async def test_status_returns_the_task(api: httpx.AsyncClient, path: str) -> None:
    with trio.fail_after(10):
        created = task_response(await api.post("/schedule", content=README_BODY), 200)
        response = await api.get(path, params={"task_id": created["task_id"]})
        assert task_response(response, 200) == created  # 200 itself: never a 301/308


@pytest.mark.parametrize("path", ["/status", "/status/"])
@pytest.mark.parametrize(
    ("query", "status", "mention"),
    [
        ("", 400, "task_id"),
        ("?task_id=", 400, "task_id"),
        ("?id=" + UNKNOWN_ID, 400, "task_id"),
        ("?task_id=not-a-uuid", 400, "task_id"),
        ("?task_id=1234", 400, "task_id"),
        ("?task_id=" + UNKNOWN_ID + "x", 400, "task_id"),
        ("?task_id=" + UNKNOWN_ID, 404, UNKNOWN_ID),
    ],
)
async def test_status_errors(
    api: httpx.AsyncClient, path: str, query: str, status: int, mention: str
) -> None:
    with trio.fail_after(10):
        assert_error(await api.get(path + query), status, mention)


async def test_status_of_a_cancelled_task(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        created = task_response(await api.post("/schedule", json={"command": "c"}), 200)
        cancelled = await api.post(f"/tasks/{created['task_id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        status = await api.get("/status", params={"task_id": created["task_id"]})
        assert task_response(status, 200) == assert_json(cancelled)
        assert assert_json(cancelled)["status"] == "cancelled"
