"""Random request bodies never make the API fail: each answer is a 2xx with a task (or a
batch of them) or a 400 JSON error — never a 500, never a stack trace.

Bodies are drawn with a seeded `random.Random` (hypothesis drives one `trio.run` per
example, and a server start per example is too slow), so a failure names its seed and
index and is replayed exactly; `TM_API_FUZZ_SEED=<n>` explores other seeds. It runs on its
own database, so that a stored row the API cannot render shows up in the listing at the
end and does not break other tests.
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

import httpx
import trio

from tests.api.contract import (
    assert_error,
    assert_json,
    assert_task,
    each_case,
    list_all,
    task_response,
)

SEED = int(os.environ.get("TM_API_FUZZ_SEED", "20261127"))
BODIES = 200

FIELDS = ("command", "scheduled_at", "max_attempts", "timeout_s", "idempotency_key", "at_most_once")
STRINGS = [
    "",
    " ",
    "\t\n",
    "x",
    "echo hi",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "日本語",
    "🚀",
    "a" * 70_000,
    "é" * 40_000,
    "null",
    "true",
    "NaN",
    "[]",
    "{}",
    '"',
    "\\",
    "2023-12-25T22:34:00+05:30",
    "2023-12-25T22:34:00",
    "2023-12-25",
    "22:34:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999-14:00",
    "2023-02-30T00:00:00Z",
    "2023-12-25T22:34:00.1234567Z",
    "2023-12-25T24:00:00Z",
    "+002023-12-25T00:00:00Z",
    "2023-12-25T22:34:00+99:99",
    "2023-12-25T22:34:00 Z",
    "1703523840",
]
NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2,
    100,
    101,
    2**31,
    2**63,
    -(2**63),
    10**30,
    10**400,
    0.0,
    -0.0,
    0.5,
    1e-9,
    1e-320,
    1e308,
    -1e308,
    604800,
    604800.0001,
    math.nan,
    math.inf,
    -math.inf,
]
SCALARS: list[Any] = [None, True, False, *STRINGS, *NUMBERS]
PLAUSIBLE: dict[str, list[Any]] = {
    "command": ["echo hi", "sleep 1", "a" * 65_536, "a" * 65_537, "x", " y ", "日本語 🚀"],
    "scheduled_at": [
        "2023-12-25T22:34:00+05:30",
        "2030-01-01T00:00:00Z",
        "2023-12-25 22:34:00.5-08:00",
        "0002-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999998Z",
        None,
    ],
    "max_attempts": [1, 3, 100, 101, 0, None],
    "timeout_s": [0.1, 5, 604800, 1e-9, None],
    "idempotency_key": ["k1", "k2", "k" * 200, "k" * 201, "🔑", None],
    "at_most_once": [True, False, None],
}


def value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.7:
        if rng.random() < 0.2:
            return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
        return rng.choice(SCALARS)
    if roll < 0.85:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice([*FIELDS, "tasks", "x", ""]): value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def task_object(rng: random.Random) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for field in FIELDS:
        if (field == "command" and rng.random() < 0.95) or rng.random() < 0.3:
            pool = PLAUSIBLE[field]
            obj[field] = rng.choice(pool) if rng.random() < 0.85 else value(rng)
    if rng.random() < 0.05:
        obj[rng.choice(["priority", "Command", "task_id", "status", ""])] = value(rng)
    return obj


def mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(data) + 1)
        action = rng.randrange(3)
        if action == 0:
            data[at:at] = bytes([rng.randrange(256)])
        elif action == 1 and data:
            del data[min(at, len(data) - 1)]
        else:
            del data[at:]
    return bytes(data)


def random_body(rng: random.Random) -> tuple[bytes, Any]:
    """Raw bytes to send, and the decoded object they hold (None when not JSON)."""
    roll = rng.random()
    if roll < 0.45:
        obj: Any = task_object(rng)
    elif roll < 0.6:
        items = [
            task_object(rng) if rng.random() < 0.8 else value(rng) for _ in range(rng.randrange(6))
        ]
        obj = {"tasks": items}
        if rng.random() < 0.1:
            obj["extra"] = value(rng)
    elif roll < 0.7:
        obj = value(rng)
    elif roll < 0.8:
        return rng.randbytes(rng.randrange(64)), None
    elif roll < 0.92:
        return mutate(rng, json.dumps(task_object(rng)).encode()), None
    else:
        depth = rng.choice([10, 500, 5_000, 50_000])
        return b'{"command": ' + b"[" * depth + b"]" * depth + b"}", None
    return json.dumps(obj).encode(), obj


def check_created(path: str, response: httpx.Response, sent: Any) -> None:
    body = assert_json(response)
    if path == "/tasks" and isinstance(sent, dict) and "tasks" in sent:
        assert response.status_code == 201, response.status_code
        assert set(body) == {"tasks"} and len(body["tasks"]) == len(sent["tasks"])
        for task in body["tasks"]:
            assert_task(task)
    else:
        assert_task(body)
        assert response.status_code in ((200,) if path == "/schedule" else (200, 201))


async def test_random_bodies_never_fail_the_api(fresh_api: httpx.AsyncClient) -> None:
    api = fresh_api
    rng = random.Random(SEED)
    cases = {}
    for i in range(BODIES):
        raw, obj = random_body(rng)
        path = rng.choice(["/schedule", "/tasks"])
        content_type = rng.choice([None, "application/json", "application/x-www-form-urlencoded"])
        cases[f"seed {SEED} #{i} {path} {raw[:60]!r}"] = (path, raw, obj, content_type)

    async def check(case: tuple[str, bytes, Any, str | None]) -> None:
        path, raw, obj, content_type = case
        headers = {"Content-Type": content_type} if content_type else {}
        response = await api.post(path, content=raw, headers=headers)
        assert response.status_code in (200, 201, 400), (response.status_code, response.text)
        if response.status_code == 400:
            assert_error(response, 400)
        else:
            check_created(path, response, obj)

    with trio.fail_after(45):
        await each_case(cases, check)
        assert (await api.get("/readyz")).status_code == 200
        # Whatever was stored can be listed and read back.
        for task in await list_all(api, limit=1000):
            assert task_response(await api.get(f"/tasks/{task['task_id']}"), 200) == task
