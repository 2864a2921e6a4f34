"""Client mistakes: each is a 4xx JSON `{"error": ...}` naming the problem, never a 500 or
a stack trace, and nothing is stored. Every bad body is sent to both creating routes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from tests.api.contract import (
    UNKNOWN_ID,
    assert_error,
    assert_error_mentions_any,
    assert_json,
    newest_task_id,
    task_response,
)

CREATE_ROUTES = (("/schedule", 200), ("/tasks", 201))
MIB = 1024 * 1024


def body_of(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def task(**fields: Any) -> dict[str, Any]:
    return {"command": "echo x", **fields}


def known_bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


# (body, words the error must mention)
BAD_BODIES = {
    # not JSON
    "truncated": (b'{"command": "x"', ()),
    "unquoted": (b"{command: x}", ()),
    "single quotes": (b"{'command': 'x'}", ()),
    "trailing comma": (b'{"command": "x",}', ()),
    "two documents": (b'{"command": "x"} {"command": "y"}', ()),
    "empty": (b"", ()),
    "whitespace": (b" \r\n\t ", ()),
    "NaN": (b'{"command": "x", "timeout_s": NaN}', ()),
    "Infinity": (b'{"command": "x", "timeout_s": Infinity}', ()),
    "-Infinity": (b'{"command": "x", "max_attempts": -Infinity}', ()),
    "bare NaN": (b"NaN", ()),
    "invalid UTF-8": (b'{"command": "\xff\xfe"}', ()),
    "latin-1": ('{"command": "café"}'.encode("latin-1"), ()),
    "UTF-16": ('{"command": "x"}'.encode("utf-16"), ()),
    # JSON, not an object
    "list": (b"[]", ()),
    "list of task": (b'[{"command": "x"}]', ()),
    "string": (b'"x"', ()),
    "number": (b"5", ()),
    "null": (b"null", ()),
    "true": (b"true", ()),
    # command
    "no command": ({}, ("command",)),
    "only scheduled_at": ({"scheduled_at": "2030-01-01T00:00:00Z"}, ("command",)),
    "command null": ({"command": None}, ("command",)),
    "command number": ({"command": 5}, ("command",)),
    "command true": ({"command": True}, ("command",)),
    "command list": ({"command": ["echo", "x"]}, ("command",)),
    "command object": ({"command": {"sh": "x"}}, ("command",)),
    "command empty": ({"command": ""}, ("command",)),
    "command blank": ({"command": " \t\n "}, ("command",)),
    "command 64 KiB + 1": ({"command": "a" * (64 * 1024 + 1)}, ("command",)),
    "command 64 KiB + 1 in bytes": ({"command": "é" * (32 * 1024) + "a"}, ("command",)),
    # scheduled_at
    "naive time": ({"command": "x", "scheduled_at": "2023-12-25T22:34:00"}, ("scheduled_at",)),
    "unparsable time": ({"command": "x", "scheduled_at": "tomorrow"}, ("scheduled_at",)),
    "impossible time": (task(scheduled_at="2023-13-45T25:00:00Z"), ("scheduled_at",)),
    "time with junk": (task(scheduled_at="2023-12-25T22:34:00+05:30 x"), ("scheduled_at",)),
    "empty time": (task(scheduled_at=""), ("scheduled_at",)),
    "epoch number": (task(scheduled_at=1703523840), ("scheduled_at",)),
    "date only": (task(scheduled_at="2023-12-25"), ("scheduled_at",)),
    "time only": (task(scheduled_at="22:34:00+05:30"), ("scheduled_at",)),
    # max_attempts
    "max_attempts 0": (task(max_attempts=0), ("max_attempts",)),
    "max_attempts -1": (task(max_attempts=-1), ("max_attempts",)),
    "max_attempts string": (task(max_attempts="3"), ("max_attempts",)),
    "max_attempts true": (task(max_attempts=True), ("max_attempts",)),
    "max_attempts 1.5": (task(max_attempts=1.5), ("max_attempts",)),
    # timeout_s
    "timeout_s 0": (task(timeout_s=0), ("timeout_s",)),
    "timeout_s -1": (task(timeout_s=-1), ("timeout_s",)),
    "timeout_s -0.0": (task(timeout_s=-0.0), ("timeout_s",)),
    "timeout_s string": (task(timeout_s="x"), ("timeout_s",)),
    "timeout_s true": (task(timeout_s=True), ("timeout_s",)),
    "timeout_s 1e400": (b'{"command": "x", "timeout_s": 1e400}', ("timeout_s",)),
    # idempotency_key
    "key 201 chars": (task(idempotency_key="k" * 201), ("idempotency_key",)),
    "key number": (task(idempotency_key=5), ("idempotency_key",)),
    # at_most_once
    "at_most_once yes": (task(at_most_once="yes"), ("at_most_once",)),
    "at_most_once 1": (task(at_most_once=1), ("at_most_once",)),
    "at_most_once 'true'": (task(at_most_once="true"), ("at_most_once",)),
    # unknown fields
    "unknown field": (task(priority=1), ("priority",)),
    "misspelt field": (task(schedule_at="2030-01-01T00:00:00Z"), ("schedule_at",)),
}

KNOWN_BUGS = {
    "year 1 with a positive offset": pytest.param(
        task(scheduled_at="0001-01-01T00:00:00+05:30"),
        ("scheduled_at",),
        marks=known_bug("tm/core/timefmt.py parse_time: astimezone OverflowError -> 500"),
    ),
    "year 9999 with a negative offset": pytest.param(
        task(scheduled_at="9999-12-31T23:59:59-05:00"),
        ("scheduled_at",),
        marks=known_bug("tm/core/timefmt.py parse_time: astimezone OverflowError -> 500"),
    ),
    "timeout_s integer beyond float": pytest.param(
        b'{"command": "x", "timeout_s": 1' + b"0" * 400 + b"}",
        ("timeout_s",),
        marks=known_bug("tm/core/tasks.py: math.isfinite(huge int) OverflowError -> 500"),
    ),
    "idempotency_key lone surrogate": pytest.param(
        b'{"command": "x", "idempotency_key": "k\\ud800"}',
        ("idempotency_key",),
        marks=known_bug("tm/core/tasks.py: surrogate key reaches asyncpg, DataError -> 500"),
    ),
}


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        *(pytest.param(body, mentions, id=name) for name, (body, mentions) in BAD_BODIES.items()),
        *(pytest.param(*p.values, marks=p.marks, id=name) for name, p in KNOWN_BUGS.items()),
    ],
)
async def test_bad_body_is_400(
    api: httpx.AsyncClient, body: Any, mentions: tuple[str, ...]
) -> None:
    with trio.fail_after(10):
        before = await newest_task_id(api)
        for path, _ in CREATE_ROUTES:
            for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
                response = await api.post(path, content=body_of(body), headers=headers)
                assert_error(response, 400, *mentions)
        batch = await api.post(
            "/tasks",
            content=b'{"tasks": [{"command": "ok"}, %s]}'
            % (body_of(body) if isinstance(body, dict) else b"[]"),
        )
        assert_error(batch, 400, "tasks[1]")
        assert await newest_task_id(api) == before


async def test_naive_time_error_says_what_is_missing(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for path, _ in CREATE_ROUTES:
            response = await api.post(path, json=task(scheduled_at="2023-12-25T22:34:00"))
            message = assert_error(response, 400, "scheduled_at")
            assert_error_mentions_any(message, "offset", "naive", "time zone", "timezone")


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        pytest.param({"command": "a" * (64 * 1024)}, {}, id="command exactly 64 KiB"),
        pytest.param({"command": "é" * (32 * 1024)}, {}, id="command 64 KiB in 2-byte chars"),
        pytest.param({"command": "日本語 🚀 ok"}, {}, id="unicode command"),
        pytest.param(task(max_attempts=1), {"max_attempts": 1}, id="max_attempts 1"),
        pytest.param(task(max_attempts=None), {"max_attempts": 1}, id="max_attempts null"),
        pytest.param(task(timeout_s=0.001), {}, id="timeout_s 0.001"),
        pytest.param(task(timeout_s=30), {}, id="timeout_s int"),
        pytest.param(task(at_most_once=False), {}, id="at_most_once false"),
        pytest.param(task(scheduled_at=None), {}, id="scheduled_at null"),
        pytest.param(
            task(scheduled_at="2023-12-25T22:34:00.123456+05:30"),
            {"scheduled_at": "2023-12-25T17:04:00.123456Z"},
            id="microseconds kept",
        ),
        pytest.param(
            task(scheduled_at="2023-12-25T17:04:00Z"),
            {"scheduled_at": "2023-12-25T17:04:00.000000Z"},
            id="Z",
        ),
        pytest.param(
            task(scheduled_at="2023-12-25T12:04:00-05:00"),
            {"scheduled_at": "2023-12-25T17:04:00.000000Z"},
            id="negative offset",
        ),
        pytest.param(
            task(scheduled_at="2023-12-25 17:04:00+00:00"),
            {"scheduled_at": "2023-12-25T17:04:00.000000Z"},
            id="space separator (RFC 3339 5.6 note)",
        ),
    ],
)
async def test_boundary_values_are_accepted(
    api: httpx.AsyncClient, fields: dict[str, Any], check: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        for path, status in CREATE_ROUTES:
            created = task_response(await api.post(path, json=fields), status)
            assert created["command"] == fields["command"]
            for name, value in check.items():
                assert created[name] == value


async def test_idempotency_key_of_200_chars_is_accepted(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        key = (uuid.uuid4().hex * 7)[:200]
        first = task_response(await api.post("/tasks", json=task(idempotency_key=key)), 201)
        again = task_response(await api.post("/schedule", json=task(idempotency_key=key)), 200)
        assert again == first


@pytest.mark.xfail(
    strict=True,
    reason="tm/core/timefmt.py format_time: strftime('%Y') gives '999', not '0999'",
)
async def test_times_before_year_1000_are_rfc3339(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await api.post("/tasks", json=task(scheduled_at="0999-01-01T00:00:00Z"))
        assert task_response(response, 201)["scheduled_at"] == "0999-01-01T00:00:00.000000Z"


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/tasks/x/y"),
        ("POST", f"/tasks/{UNKNOWN_ID}/retry"),
        ("GET", "/schedule/extra"),
    ],
)
async def test_unknown_route_is_404_json(api: httpx.AsyncClient, method: str, path: str) -> None:
    with trio.fail_after(10):
        assert_error(await api.request(method, path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/schedule", "POST"),
        ("DELETE", "/tasks", "GET"),
        ("PUT", "/tasks", "POST"),
        ("DELETE", f"/tasks/{UNKNOWN_ID}", "GET"),
        ("GET", f"/tasks/{UNKNOWN_ID}/cancel", "POST"),
        ("POST", "/status", "GET"),
        ("POST", "/workers", "GET"),
        ("POST", "/healthz", "GET"),
    ],
)
async def test_wrong_method_is_405_json(
    api: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    with trio.fail_after(10):
        response = await api.request(method, path)
        assert_error(response, 405)
        assert allowed in response.headers.get("allow", ""), response.headers


# ---------------------------------------------------------------- body size


async def chunks(total: int, chunk: int = MIB) -> AsyncIterator[bytes]:
    yield b'{"command": "'
    sent = 0
    while sent < total:
        yield b"a" * min(chunk, total - sent)
        sent += chunk
    yield b'"}'


async def test_streamed_body_over_32_mib_is_413(api: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        before = await newest_task_id(api)
        response = await api.post("/tasks", content=chunks(33 * MIB))  # chunked, no length
        assert_error(response, 413)
        assert await newest_task_id(api) == before
        assert (await api.get("/healthz")).status_code == 200


async def test_body_over_32_mib_with_content_length_is_413(api: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        before = await newest_task_id(api)
        body = b'{"command": "' + b"a" * (33 * MIB) + b'"}'
        assert_error(await api.post("/schedule", content=body), 413)
        assert await newest_task_id(api) == before


async def test_large_body_under_the_limit_is_read(api: httpx.AsyncClient) -> None:
    """A 2 MiB body (JSON padded with whitespace) is not cut short by some smaller limit."""
    with trio.fail_after(30):
        body = b'{"command": "echo padded"' + b" " * (2 * MIB) + b"}"
        assert task_response(await api.post("/tasks", content=body), 201)["command"] == (
            "echo padded"
        )


async def test_error_bodies_are_json_objects_only(api: httpx.AsyncClient) -> None:
    """Every error shape seen above is exactly {"error": str}; spot-check a few at once."""
    with trio.fail_after(10):
        for response in (
            await api.post("/tasks", content=b"{"),
            await api.get("/nope"),
            await api.get("/schedule"),
            await api.get(f"/tasks/{UNKNOWN_ID}"),
        ):
            body = assert_json(response)
            assert list(body) == ["error"]
