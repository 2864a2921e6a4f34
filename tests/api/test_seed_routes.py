"""Seed-compatible routes: POST /schedule and GET /status, as the original README uses them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import trio

from tests.api.contract import (
    UNKNOWN_ID,
    assert_error,
    assert_json,
    assert_new_task,
    each_case,
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

        for path in ("/status", "/status/"):  # 200 itself: never a 301/308 redirect
            status = await api.get(path, params={"task_id": task["task_id"]})
            assert task_response(status, 200) == task


async def test_form_content_type_body_is_not_form_decoded(api: httpx.AsyncClient) -> None:
    commands = ["echo a=b&c=d", "x=%20%26+y", "curl -d 'k=v' 'http://h/?q=1&r=2'", "a+b=c;d"]

    async def check(command: str) -> None:
        body = json.dumps({"command": command}).encode()
        response = await api.post("/schedule", content=body, headers=FORM)
        assert task_response(response, 200)["command"] == command

    with trio.fail_after(10):
        await each_case({c: c for c in commands}, check)


async def test_any_content_type_is_read_as_json(api: httpx.AsyncClient) -> None:
    content_types = [
        "",
        "text/plain",
        "application/json",
        "application/json; charset=utf-8",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
    ]

    async def check(content_type: str) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await api.post("/schedule", content=README_BODY, headers=headers)
        assert task_response(response, 200)["scheduled_at"] == "2023-12-25T17:04:00.000000Z"

    with trio.fail_after(10):
        await each_case({c or "(none)": c for c in content_types}, check)


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
            "idempotency_key": f"seed-{uuid.uuid4()}",
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


async def test_status_errors(api: httpx.AsyncClient) -> None:
    queries = {
        "no task_id": ("", 400, "task_id"),
        "empty task_id": ("?task_id=", 400, "task_id"),
        "other parameter": ("?id=" + UNKNOWN_ID, 400, "task_id"),
        "not a uuid": ("?task_id=not-a-uuid", 400, "task_id"),
        "short": ("?task_id=1234", 400, "task_id"),
        "uuid plus junk": ("?task_id=" + UNKNOWN_ID + "x", 400, "task_id"),
        "unknown": ("?task_id=" + UNKNOWN_ID, 404, UNKNOWN_ID),
    }

    async def check(case: tuple[str, int, str]) -> None:
        query, status, mention = case
        for path in ("/status", "/status/"):
            assert_error(await api.get(path + query), status, mention)

    with trio.fail_after(10):
        await each_case(queries, check)


async def test_status_follows_the_task(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        created = task_response(await api.post("/schedule", json={"command": "c"}), 200)
        cancelled = await api.post(f"/tasks/{created['task_id']}/cancel")
        assert task_response(cancelled, 200)["status"] == "cancelled"
        status = await api.get("/status", params={"task_id": created["task_id"]})
        assert task_response(status, 200) == assert_json(cancelled)
