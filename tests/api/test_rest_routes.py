"""REST routes: POST /tasks (single, idempotent, batch), GET /tasks[/<id>], cancel, workers,
health."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import trio

from tests.api.contract import (
    UNKNOWN_ID,
    assert_error,
    assert_error_mentions_any,
    assert_json,
    assert_new_task,
    assert_task,
    each_case,
    list_all,
    newest_task_id,
    task_response,
)


async def create(client: httpx.AsyncClient, command: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/tasks", json={"command": command, **fields})
    return assert_new_task(task_response(response, 201))


def batch_tasks(response: httpx.Response, status: int = 201) -> list[dict[str, Any]]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = assert_json(response)
    assert isinstance(body, dict) and set(body) == {"tasks"}, str(body)[:300]
    return [assert_task(t) for t in body["tasks"]]


# ---------------------------------------------------------------- POST /tasks


async def test_create_one_task(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        body = {"command": "echo hi", "scheduled_at": "2023-12-25T22:34:00+05:30"}
        task = await create(api, **body)
        assert task["command"] == "echo hi"
        assert task["scheduled_at"] == "2023-12-25T17:04:00.000000Z"
        assert task["max_attempts"] == 1
        fetched = await api.get(f"/tasks/{task['task_id']}")
        assert task_response(fetched, 200) == task


async def test_create_with_every_optional_field(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        task = await create(
            api,
            "echo all",
            scheduled_at="2031-06-01T12:00:00.250000-07:00",
            max_attempts=5,
            timeout_s=0.5,
            idempotency_key=f"all-{uuid.uuid4()}",
            at_most_once=True,
        )
        assert task["scheduled_at"] == "2031-06-01T19:00:00.250000Z"
        assert task["max_attempts"] == 5


async def test_repeat_with_idempotency_key_returns_the_existing_task(
    api: httpx.AsyncClient,
) -> None:
    with trio.fail_after(10):
        key = f"order-{uuid.uuid4()}"
        body = {"command": "echo once", "idempotency_key": key}
        first = await create(api, **body)
        again = await api.post("/tasks", json=body)
        assert task_response(again, 200) == first
        changed = await api.post("/tasks", json={**body, "command": "echo twice"})
        assert task_response(changed, 200) == first
        assert await newest_task_id(api) == first["task_id"]  # no second row
        seed_route = await api.post("/schedule", json=body)
        assert task_response(seed_route, 200) == first
        other = await create(api, "echo other", idempotency_key=key + "-2")
        assert other["task_id"] != first["task_id"]
        assert await newest_task_id(api) == other["task_id"]


async def test_repeated_key_inside_one_batch_is_one_task(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        key = f"dup-{uuid.uuid4()}"
        items = [
            {"command": "a", "idempotency_key": key},
            {"command": "b"},
            {"command": "c", "idempotency_key": key},
        ]
        tasks = batch_tasks(await api.post("/tasks", json={"tasks": items}))
        assert tasks[0] == tasks[2]
        assert tasks[0]["command"] == "a"
        assert tasks[1]["task_id"] != tasks[0]["task_id"]


async def test_batch_of_500_in_input_order(api: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        commands = [f"echo batch-{i:04d}" for i in reversed(range(500))]
        response = await api.post("/tasks", json={"tasks": [{"command": c} for c in commands]})
        tasks = batch_tasks(response, 201)
        assert [t["command"] for t in tasks] == commands
        assert all(t["status"] == "scheduled" and t["attempt"] == 0 for t in tasks)
        ids = [t["task_id"] for t in tasks]
        assert len(set(ids)) == 500
        for task in tasks[::50]:
            assert task_response(await api.get(f"/tasks/{task['task_id']}"), 200) == task

        # The newest 500 tasks are this batch; paging through them with limit=100 gives
        # each once, newest first, even where rows share a created_at.
        stored: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(5):
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            page = assert_json(await api.get("/tasks", params=params))
            stored += page["tasks"]
            after = page["next"]
        assert sorted(t["task_id"] for t in stored) == sorted(ids)
        created = [t["created_at"] for t in stored]
        assert created == sorted(created, reverse=True)


MINIMAL = {"Prefer": "return=minimal"}


async def test_prefer_return_minimal_answers_only_ids(api: httpx.AsyncClient) -> None:
    """`Prefer: return=minimal` (RFC 7240): a batch is answered with its ids in input
    order, a single task with its id; the tasks stored are the same as without it."""
    with trio.fail_after(20):
        key = f"min-{uuid.uuid4()}"
        [known] = batch_tasks(await api.post(
            "/tasks", json={"tasks": [{"command": "known", "idempotency_key": key}]}))
        items: list[dict[str, Any]] = [{"command": f"echo min-{i}"} for i in range(300)]
        items[17] = {"command": "repeat", "idempotency_key": key}
        response = await api.post("/tasks", json={"tasks": items}, headers=MINIMAL)
        assert response.status_code == 201, response.text[:300]
        assert response.headers["preference-applied"] == "return=minimal"
        body = assert_json(response)
        assert set(body) == {"task_ids"} and len(body["task_ids"]) == 300
        ids = body["task_ids"]
        assert ids[17] == known["task_id"]  # a known key answers the existing task's id
        assert len(set(ids)) == 300
        for index in (0, 150, 299, 17):
            stored = task_response(await api.get(f"/tasks/{ids[index]}"), 200)
            expected = "known" if index == 17 else f"echo min-{index}"
            assert stored["command"] == expected

        single = await api.post("/tasks", json={"command": "one", "idempotency_key": key + "1"},
                                headers={"Prefer": "wait=5, return=minimal; x=y"})
        assert single.status_code == 201
        assert single.headers["preference-applied"] == "return=minimal"
        [task_id] = assert_json(single).values()
        assert task_response(await api.get(f"/tasks/{task_id}"), 200)["command"] == "one"
        again = await api.post("/tasks", json={"command": "one", "idempotency_key": key + "1"},
                               headers=MINIMAL)
        assert (again.status_code, assert_json(again)) == (200, {"task_id": task_id})


async def test_other_preferences_keep_the_full_answer(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for prefer in ("return=representation", "respond-async", "return=minimalist"):
            response = await api.post("/tasks", json={"tasks": [{"command": "full"}]},
                                      headers={"Prefer": prefer})
            assert batch_tasks(response)[0]["command"] == "full"
            assert "preference-applied" not in response.headers
        # a bad request is the same clear error either way
        assert_error(await api.post("/tasks", json={"tasks": []}, headers=MINIMAL), 400, "empty")


async def test_batch_fields_are_per_task(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        items = [
            {"command": "a", "scheduled_at": "2030-01-01T00:00:00Z", "max_attempts": 2},
            {"command": "b"},
            {"command": "c", "scheduled_at": "2030-01-01T05:30:00+05:30", "at_most_once": True},
        ]
        tasks = batch_tasks(await api.post("/tasks", json={"tasks": items}))
        assert [(t["command"], t["max_attempts"]) for t in tasks] == [("a", 2), ("b", 1), ("c", 1)]
        assert tasks[0]["scheduled_at"] == tasks[2]["scheduled_at"] == "2030-01-01T00:00:00.000000Z"


async def test_batch_of_10000_is_accepted(api: httpx.AsyncClient) -> None:
    with trio.fail_after(40):
        items = [{"command": f"n{i}"} for i in range(10_000)]
        tasks = batch_tasks(await api.post("/tasks", json={"tasks": items}))
        assert [t["command"] for t in tasks] == [item["command"] for item in items]
        assert len({t["task_id"] for t in tasks}) == 10_000
        page = assert_json(await api.get("/tasks", params={"limit": 1000}))
        assert len(page["tasks"]) == 1000 and page["next"] is not None


async def test_batch_with_one_bad_task_stores_nothing(api: httpx.AsyncClient) -> None:
    bad_tasks: dict[str, Any] = {
        "empty command": {"command": ""},
        "command not a string": {"command": 7},
        "no command": {},
        "naive time": {"command": "x", "scheduled_at": "2023-12-25T22:34:00"},
        "max_attempts 0": {"command": "x", "max_attempts": 0},
        "unknown field": {"command": "x", "bogus": 1},
        "not an object": "echo x",
    }

    async def check(bad: Any) -> None:
        items: list[Any] = [{"command": f"good {i}"} for i in range(12)]
        items[7] = bad
        assert_error(await api.post("/tasks", json={"tasks": items}), 400, "tasks[7]")

    with trio.fail_after(10):
        before = await newest_task_id(api)
        await each_case(bad_tasks, check)
        assert await newest_task_id(api) == before


async def test_batch_with_bad_task_at_the_end_of_10000_stores_nothing(
    fresh_api: httpx.AsyncClient,
) -> None:
    with trio.fail_after(30):
        items: list[Any] = [{"command": f"n{i}"} for i in range(10_000)]
        items[-1] = {"command": "late", "timeout_s": 0}
        response = await fresh_api.post("/tasks", json={"tasks": items})
        assert_error(response, 400, "tasks[9999]")
        response = await fresh_api.get("/tasks")
        assert response.status_code == 200
        assert assert_json(response) == {"tasks": [], "next": None}


async def test_batch_over_10000_is_refused(api: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        before = await newest_task_id(api)
        items = [{"command": f"n{i}"} for i in range(10_001)]
        message = assert_error(await api.post("/tasks", json={"tasks": items}), 400)
        assert_error_mentions_any(message, "10000", "10,000", "10_000")
        assert await newest_task_id(api) == before


async def test_empty_or_malformed_batch_is_refused(api: httpx.AsyncClient) -> None:
    bodies: dict[str, Any] = {
        "empty": {"tasks": []},
        "null": {"tasks": None},
        "string": {"tasks": "echo"},
        "object": {"tasks": {"command": "x"}},
    }

    async def check(body: Any) -> None:
        assert_error(await api.post("/tasks", json=body), 400, "tasks")

    with trio.fail_after(10):
        before = await newest_task_id(api)
        await each_case(bodies, check)
        assert await newest_task_id(api) == before


# ---------------------------------------------------------------- GET /tasks/<id>


async def test_get_task_errors(api: httpx.AsyncClient) -> None:
    paths = {
        "not a uuid": ("/tasks/not-a-uuid", 400),
        "short": ("/tasks/1234", 400),
        "uuid plus a digit": (f"/tasks/{UNKNOWN_ID}0", 400),
        "blank": ("/tasks/%20", 400),
        "unknown": (f"/tasks/{UNKNOWN_ID}", 404),
        "unknown, upper case": (f"/tasks/{UNKNOWN_ID.upper()}", 404),
    }

    async def check(case: tuple[str, int]) -> None:
        path, status = case
        message = assert_error(await api.get(path), status)
        if status == 404:
            assert UNKNOWN_ID in message.lower(), message

    with trio.fail_after(10):
        await each_case(paths, check)


# ---------------------------------------------------------------- GET /tasks


async def test_pagination_newest_first(fresh_api: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        empty = await fresh_api.get("/tasks")
        assert empty.status_code == 200
        assert assert_json(empty) == {"tasks": [], "next": None}
        created = [(await create(fresh_api, f"echo {i}"))["task_id"] for i in range(25)]
        newest_first = list(reversed(created))
        pages: list[list[str]] = []
        after: str | None = None
        for _ in range(3):
            params: dict[str, Any] = {"limit": 10, **({"after": after} if after else {})}
            response = await fresh_api.get("/tasks", params=params)
            assert response.status_code == 200, response.text
            body = assert_json(response)
            assert set(body) == {"tasks", "next"}
            pages.append([assert_task(t)["task_id"] for t in body["tasks"]])
            after = body["next"]
            if len(pages) < 3:
                assert isinstance(after, str) and after
        assert after is None
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [i for page in pages for i in page] == newest_first

        everything = assert_json(await fresh_api.get("/tasks"))  # default limit 100
        assert [t["task_id"] for t in everything["tasks"]] == newest_first
        assert everything["next"] is None

        exact = assert_json(await fresh_api.get("/tasks", params={"limit": 25}))
        assert len(exact["tasks"]) == 25 and exact["next"] is None


async def test_status_filter(fresh_api: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        ids = [(await create(fresh_api, f"echo {i}"))["task_id"] for i in range(5)]
        for task_id in ids[1:3]:
            assert (await fresh_api.post(f"/tasks/{task_id}/cancel")).status_code == 200

        cancelled = await list_all(fresh_api, status="cancelled")
        assert [t["task_id"] for t in cancelled] == [ids[2], ids[1]]
        assert all(t["status"] == "cancelled" for t in cancelled)

        scheduled = await list_all(fresh_api, status="scheduled", limit=2)
        assert [t["task_id"] for t in scheduled] == [ids[4], ids[3], ids[0]]

        for status in ("picked", "running", "completed", "failed"):
            response = await fresh_api.get("/tasks", params={"status": status})
            assert response.status_code == 200
            assert assert_json(response) == {"tasks": [], "next": None}


async def test_list_parameter_errors(api: httpx.AsyncClient) -> None:
    queries: dict[str, tuple[dict[str, str], str]] = {
        "unknown status": ({"status": "done"}, "status"),
        "status in capitals": ({"status": "SCHEDULED"}, "status"),
        "limit 0": ({"limit": "0"}, "limit"),
        "limit 1001": ({"limit": "1001"}, "limit"),
        "limit -1": ({"limit": "-1"}, "limit"),
        "limit abc": ({"limit": "abc"}, "limit"),
        "limit 1.5": ({"limit": "1.5"}, "limit"),
        "after garbage": ({"after": "garbage"}, "after"),
        "after punctuation": ({"after": "!!!"}, "after"),
        "after base64 of junk": ({"after": "bm90LWEtY3Vyc29y"}, "after"),
        "after a task id": ({"after": UNKNOWN_ID}, "after"),
    }

    async def check(case: tuple[dict[str, str], str]) -> None:
        params, mention = case
        assert_error(await api.get("/tasks", params=params), 400, mention)

    with trio.fail_after(10):
        await each_case(queries, check)


async def test_limit_bounds_are_accepted(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        await create(api, "echo bounds")
        for limit in (1, 1000):
            response = await api.get("/tasks", params={"limit": limit})
            assert response.status_code == 200, response.text
            assert 1 <= len(assert_json(response)["tasks"]) <= limit


# ---------------------------------------------------------------- cancel


async def test_cancel_scheduled_task(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        task = await create(api, "echo cancel me", scheduled_at="2030-01-01T00:00:00Z")
        response = await api.post(f"/tasks/{task['task_id']}/cancel")
        cancelled = task_response(response, 200)
        assert cancelled["task_id"] == task["task_id"]
        assert cancelled["status"] == "cancelled"
        assert cancelled["cancelled_at"] is not None
        assert cancelled["cancelled_at"] >= task["created_at"]
        for field in ("command", "scheduled_at", "created_at", "max_attempts"):
            assert cancelled[field] == task[field]
        assert task_response(await api.get(f"/tasks/{task['task_id']}"), 200) == cancelled

        again = await api.post(f"/tasks/{task['task_id']}/cancel")
        assert_error(again, 409)
        assert task_response(await api.get(f"/tasks/{task['task_id']}"), 200) == cancelled


async def test_cancel_errors(api: httpx.AsyncClient) -> None:
    ids = {"unknown": (UNKNOWN_ID, 404), "not a uuid": ("not-a-uuid", 400), "short": ("1234", 400)}

    async def check(case: tuple[str, int]) -> None:
        raw_id, status = case
        assert_error(await api.post(f"/tasks/{raw_id}/cancel"), status)

    with trio.fail_after(10):
        await each_case(ids, check)


# ---------------------------------------------------------------- workers, health


async def test_no_workers(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await api.get("/workers")
        assert response.status_code == 200
        assert assert_json(response) == {"workers": []}


async def test_health(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for path in ("/healthz", "/readyz"):
            response = await api.get(path)
            assert response.status_code == 200, (path, response.text)
            assert isinstance(assert_json(response), dict)


async def test_metrics_is_prometheus_text(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await api.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "# TYPE" in response.text


async def test_openapi_document(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await api.get("/openapi.json")
        assert response.status_code == 200, response.text
        document = assert_json(response)
        assert "openapi" in document
        assert {"/schedule", "/status", "/tasks"} <= set(document["paths"])
