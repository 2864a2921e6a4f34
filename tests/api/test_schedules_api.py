"""Recurring schedules over HTTP: create, list, show, edit, pause/resume, delete, runs, and
every error (400 naming the field, 404, 409), against the real scheduler and PostgreSQL.

No coordinator runs here: the runs of a schedule are inserted as a coordinator would insert
them (tests/integration/test_schedules_db.py covers materializing).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import trio

from tests.api.contract import (
    TIME_RE,
    assert_error,
    assert_json,
    assert_task,
    each_case,
)
from tests.e2e.cluster import query_database

SCHEDULE_FIELDS = {
    "name", "cron", "timezone", "command", "max_attempts", "timeout_s", "at_most_once",
    "overlap", "catch_up", "paused", "created_at", "updated_at", "next_fire_at",
    "last_fire_at", "skipped_runs", "missed_runs",
}


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def parse(value: str) -> datetime:
    assert TIME_RE.match(value), value
    return datetime.fromisoformat(value)


def assert_schedule(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = assert_json(response)
    assert isinstance(body, dict) and set(body) == SCHEDULE_FIELDS, body
    for field in ("created_at", "updated_at"):
        parse(body[field])
    for field in ("next_fire_at", "last_fire_at"):
        assert body[field] is None or TIME_RE.match(body[field]), (field, body[field])
    return body


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": unique(), "cron": "*/5 * * * *", "command": "echo tick", **fields}
    return assert_schedule(await client.post("/schedules", json=body), 201)


# ---------------------------------------------------------------- create and read


async def test_create_with_defaults_and_read_back(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        name = unique("defaults")
        created = assert_schedule(
            await api.post("/schedules", json={"name": name, "cron": "0 9 * * 1-5",
                                                "command": "backup"}), 201)
        assert created | {"created_at": None, "updated_at": None, "next_fire_at": None} == {
            "name": name, "cron": "0 9 * * 1-5", "timezone": "UTC", "command": "backup",
            "max_attempts": 1, "timeout_s": None, "at_most_once": False, "overlap": "allow",
            "catch_up": "latest", "paused": False, "created_at": None, "updated_at": None,
            "next_fire_at": None, "last_fire_at": None, "skipped_runs": 0, "missed_runs": 0,
        }
        next_fire = parse(created["next_fire_at"])
        assert next_fire > parse(created["created_at"])
        assert next_fire - parse(created["created_at"]) <= timedelta(days=4)
        assert next_fire.hour == 9 and next_fire.minute == 0 and next_fire.weekday() < 5
        fetched = assert_schedule(await api.get(f"/schedules/{name}"), 200)
        assert fetched == created


async def test_create_with_every_field_in_a_time_zone(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        created = await create(
            api, cron="30 2 * * *", timezone="Europe/Berlin", max_attempts=3, timeout_s=2.5,
            at_most_once=True, overlap="skip", catch_up="all",
        )
        assert (created["timezone"], created["max_attempts"], created["timeout_s"],
                created["at_most_once"], created["overlap"], created["catch_up"]) == (
            "Europe/Berlin", 3, 2.5, True, "skip", "all")
        local = parse(created["next_fire_at"]).astimezone(ZoneInfo("Europe/Berlin"))
        # 02:30 Berlin time, or 03:00 on the one day a year 02:30 does not exist
        assert (local.hour, local.minute) in ((2, 30), (3, 0))


async def test_every_and_seconds_and_paused(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        every = await create(api, cron="@every 90s")
        fire = parse(every["next_fire_at"])
        assert fire.timestamp() % 90 == 0
        seconds = await create(api, cron="*/10 * * * * *")
        assert parse(seconds["next_fire_at"]).second % 10 == 0
        paused = await create(api, paused=True)
        assert paused["paused"] is True and paused["next_fire_at"] is None


async def test_any_content_type_is_read_as_json(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        name = unique("form")
        response = await api.post(
            "/schedules",
            content=f'{{"name": "{name}", "cron": "@hourly", "command": "x"}}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert assert_schedule(response, 201)["cron"] == "@hourly"


async def test_duplicate_name_is_409_and_changes_nothing(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        first = await create(api)
        again = await api.post("/schedules", json={"name": first["name"], "cron": "@daily",
                                                    "command": "other"})
        assert_error(again, 409, first["name"], "exists")
        assert assert_schedule(await api.get(f"/schedules/{first['name']}"), 200) == first


async def test_list_pages_by_name(fresh_api: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        empty = assert_json(await fresh_api.get("/schedules"))
        assert empty == {"schedules": [], "next": None}
        names = sorted(unique(f"list{i}") for i in range(5))
        for name in reversed(names):
            await create(fresh_api, name=name)
        seen: list[str] = []
        after = None
        for _ in range(5):
            params = {"limit": 2, **({"after": after} if after else {})}
            page = assert_json(await fresh_api.get("/schedules", params=params))
            assert set(page) == {"schedules", "next"}
            seen += [s["name"] for s in page["schedules"]]
            after = page["next"]
            if after is None:
                break
        assert seen == names


# ---------------------------------------------------------------- edit, pause, resume, delete


async def test_patch_edits_pauses_and_resumes(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        created = await create(api, cron="0 9 * * *")
        name = created["name"]
        edited = assert_schedule(
            await api.patch(f"/schedules/{name}", json={"command": "echo new", "max_attempts": 2,
                                                        "timeout_s": None}), 200)
        assert (edited["command"], edited["max_attempts"]) == ("echo new", 2)
        assert edited["next_fire_at"] == created["next_fire_at"]  # timing unchanged
        assert parse(edited["updated_at"]) > parse(created["updated_at"])

        retimed = assert_schedule(
            await api.patch(f"/schedules/{name}", json={"cron": "@every 7s"}), 200)
        assert parse(retimed["next_fire_at"]).timestamp() % 7 == 0
        assert parse(retimed["next_fire_at"]) - parse(retimed["updated_at"]) <= timedelta(
            seconds=7)

        zoned = assert_schedule(
            await api.patch(f"/schedules/{name}", json={"cron": "0 9 * * *",
                                                        "timezone": "Asia/Kolkata"}), 200)
        assert parse(zoned["next_fire_at"]).strftime("%H:%M") == "03:30"

        paused = assert_schedule(await api.patch(f"/schedules/{name}", json={"paused": True}), 200)
        assert paused["paused"] is True and paused["next_fire_at"] is None
        again = assert_schedule(await api.patch(f"/schedules/{name}", json={"paused": True}), 200)
        assert again == paused  # nothing changed, not even updated_at
        resumed = assert_schedule(
            await api.patch(f"/schedules/{name}", json={"paused": False}), 200)
        assert resumed["paused"] is False
        assert resumed["next_fire_at"] == zoned["next_fire_at"]
        # the name may be repeated, not changed
        same = await api.patch(f"/schedules/{name}", json={"name": name, "overlap": "skip"})
        assert assert_schedule(same, 200)["overlap"] == "skip"


async def test_delete_keeps_the_tasks(fresh_api: httpx.AsyncClient, database_url: str) -> None:
    with trio.fail_after(20):
        created = await create(fresh_api)
        name = created["name"]
        await insert_runs(database_url, name, 2)
        deleted = assert_schedule(await fresh_api.delete(f"/schedules/{name}"), 200)
        assert deleted["name"] == name
        assert_error(await fresh_api.get(f"/schedules/{name}"), 404, name)
        assert_error(await fresh_api.delete(f"/schedules/{name}"), 404, name)
        assert_error(await fresh_api.get(f"/schedules/{name}/runs"), 404, name)
        tasks = assert_json(await fresh_api.get("/tasks"))["tasks"]
        assert len(tasks) == 2
        # the name is free again
        await create(fresh_api, name=name)


# ---------------------------------------------------------------- runs


async def insert_runs(database_url: str, name: str, count: int, *, other: int = 0) -> None:
    """`count` tasks of schedule `name` fired a minute apart, plus `other` ordinary tasks,
    inserted one at a time (so created_at increases)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(count):
        await query_database(
            database_url,
            "INSERT INTO tasks (task_id, command, scheduled_at, schedule_name, fire_at) "
            "VALUES ($1, $2, $3, $4, $3)",
            uuid.uuid4(), f"run {i}", start + timedelta(minutes=i), name,
        )
    for i in range(other):
        await query_database(
            database_url,
            "INSERT INTO tasks (task_id, command, scheduled_at) VALUES ($1, $2, $3)",
            uuid.uuid4(), f"other {i}", start,
        )


async def test_runs_newest_first_paged_and_filtered(
    fresh_api: httpx.AsyncClient, database_url: str
) -> None:
    with trio.fail_after(30):
        mine, theirs = await create(fresh_api), await create(fresh_api)
        assert assert_json(await fresh_api.get(f"/schedules/{mine['name']}/runs")) == {
            "tasks": [], "next": None}
        await insert_runs(database_url, mine["name"], 5, other=2)
        await insert_runs(database_url, theirs["name"], 1)
        await query_database(database_url, "UPDATE tasks SET status = 'cancelled', "
                             "cancelled_at = clock_timestamp() WHERE command = 'run 0'")
        runs: list[dict[str, Any]] = []
        after = None
        for _ in range(5):
            params = {"limit": 2, **({"after": after} if after else {})}
            page = assert_json(await fresh_api.get(f"/schedules/{mine['name']}/runs",
                                                   params=params))
            assert set(page) == {"tasks", "next"}
            runs += page["tasks"]
            after = page["next"]
            if after is None:
                break
        assert [r["command"] for r in runs] == [f"run {i}" for i in reversed(range(5))]
        for run in runs:
            assert set(run) - {"schedule", "fire_at"} == set(assert_task(
                {k: v for k, v in run.items() if k not in ("schedule", "fire_at")}))
            assert run["schedule"] == mine["name"]
            assert run["fire_at"] == run["scheduled_at"]
        scheduled = assert_json(await fresh_api.get(f"/schedules/{mine['name']}/runs",
                                                    params={"status": "scheduled"}))
        assert len(scheduled["tasks"]) == 4
        cancelled = assert_json(await fresh_api.get(f"/schedules/{mine['name']}/runs",
                                                    params={"status": "cancelled"}))
        assert [r["command"] for r in cancelled["tasks"]] == ["run 0"]


# ---------------------------------------------------------------- errors


async def test_bad_schedules_are_400s_naming_the_problem(api: httpx.AsyncClient) -> None:
    def body(**fields: Any) -> dict[str, Any]:
        return {"name": unique("bad"), "cron": "*/5 * * * *", "command": "x", **fields}

    cases: dict[str, tuple[Any, tuple[str, ...]]] = {
        "bad minute": (body(cron="61 * * * *"), ("cron", "61 * * * *", "minute")),
        "too few fields": (body(cron="* * *"), ("cron", "fields")),
        "too many fields": (body(cron="* * * * * * *"), ("cron", "fields")),
        "step zero": (body(cron="*/0 * * * *"), ("cron",)),
        "impossible date": (body(cron="0 0 31 2 *"), ("cron", "day-of-month")),
        "unknown macro": (body(cron="@fortnightly"), ("cron", "@fortnightly")),
        "bad @every": (body(cron="@every soon"), ("@every", "duration")),
        "@every 0s": (body(cron="@every 0s"), ("@every",)),
        "cron missing": ({"name": unique(), "command": "x"}, ("cron", "required")),
        "cron not a string": (body(cron=5), ("cron", "string")),
        "empty cron": (body(cron="  "), ("cron", "empty")),
        "unknown zone": (body(timezone="Mars/Olympus_Mons"), ("timezone", "Mars/Olympus_Mons")),
        "zone path": (body(timezone="../../etc/passwd"), ("timezone",)),
        "zone not a string": (body(timezone=1), ("timezone",)),
        "name missing": ({"cron": "@daily", "command": "x"}, ("name", "required")),
        "name with slash": (body(name="a/b"), ("name",)),
        "name with space": (body(name="a b"), ("name",)),
        "name too long": (body(name="a" * 101), ("name",)),
        "name leading dash": (body(name="-a"), ("name",)),
        "name not a string": (body(name=7), ("name",)),
        "command missing": ({"name": unique(), "cron": "@daily"}, ("command", "required")),
        "empty command": (body(command=" "), ("command",)),
        "bad max_attempts": (body(max_attempts=0), ("max_attempts",)),
        "bad timeout": (body(timeout_s=-1), ("timeout_s",)),
        "bad overlap": (body(overlap="queue"), ("overlap", "allow", "skip")),
        "bad catch_up": (body(catch_up="some"), ("catch_up", "none", "latest", "all")),
        "bad paused": (body(paused="yes"), ("paused",)),
        "bad at_most_once": (body(at_most_once=1), ("at_most_once",)),
        "unknown field": (body(when="now"), ("unknown", "when")),
        "list": ([body()], ("object",)),
        "not JSON": (b"{name:", ("JSON",)),
    }

    async def check(case: tuple[Any, tuple[str, ...]]) -> None:
        payload, words = case
        if isinstance(payload, bytes):
            response = await api.post("/schedules", content=payload)
        else:
            response = await api.post("/schedules", json=payload)
        assert_error(response, 400, *words)
        if isinstance(payload, dict) and isinstance(payload.get("name"), str):
            assert (await api.get(f"/schedules/{payload['name']}")).status_code in (400, 404)

    with trio.fail_after(30):
        await each_case(cases, check)


async def test_bad_patches_unknown_names_and_bad_queries(api: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        created = await create(api)
        name = created["name"]
        patches: dict[str, tuple[Any, tuple[str, ...]]] = {
            "bad cron": ({"cron": "every day"}, ("cron",)),
            "null cron": ({"cron": None}, ("cron", "null")),
            "unknown zone": ({"timezone": "Europe/Atlantis"}, ("timezone", "Europe/Atlantis")),
            "rename": ({"name": "other"}, ("name", "cannot be changed")),
            "unknown field": ({"colour": "red"}, ("unknown", "colour")),
            "bad overlap": ({"overlap": 1}, ("overlap",)),
            "not an object": (["paused"], ("object",)),
            "empty command": ({"command": ""}, ("command",)),
        }

        async def check_patch(case: tuple[Any, tuple[str, ...]]) -> None:
            payload, words = case
            assert_error(await api.patch(f"/schedules/{name}", json=payload), 400, *words)

        await each_case(patches, check_patch)
        assert assert_schedule(await api.get(f"/schedules/{name}"), 200) == created

        missing = unique("missing")
        requests = {
            "get unknown": (api.get(f"/schedules/{missing}"), 404, (missing,)),
            "patch unknown": (api.patch(f"/schedules/{missing}", json={"paused": True}), 404,
                              (missing,)),
            "delete unknown": (api.delete(f"/schedules/{missing}"), 404, (missing,)),
            "runs unknown": (api.get(f"/schedules/{missing}/runs"), 404, (missing,)),
            "get malformed": (api.get("/schedules/-x"), 400, ("name",)),
            "runs malformed": (api.get("/schedules/a%20b/runs"), 400, ("name",)),
            "delete malformed": (api.delete("/schedules/.x"), 400, ("name",)),
            "list bad limit": (api.get("/schedules", params={"limit": "0"}), 400, ("limit",)),
            "list bad after": (api.get("/schedules", params={"after": "a b"}), 400, ("after",)),
            "runs bad status": (api.get(f"/schedules/{name}/runs", params={"status": "x"}), 400,
                                ("status",)),
            "runs bad cursor": (api.get(f"/schedules/{name}/runs", params={"after": "zz"}), 400,
                                ("after",)),
            "runs bad limit": (api.get(f"/schedules/{name}/runs", params={"limit": "1001"}),
                               400, ("limit",)),
            "put": (api.put(f"/schedules/{name}", json={}), 405, ("PUT",)),
        }

        async def check_request(case: tuple[Any, int, tuple[str, ...]]) -> None:
            pending, status, words = case
            assert_error(await pending, status, *words)

        await each_case(requests, check_request)


async def test_openapi_documents_the_schedule_routes(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        spec = assert_json(await api.get("/openapi.json"))
    paths = spec["paths"]
    assert {"post", "get"} <= set(paths["/schedules"])
    assert {"get", "patch", "delete"} <= set(paths["/schedules/{name}"])
    assert "get" in paths["/schedules/{name}/runs"]
    assert {"201", "400", "409"} <= set(paths["/schedules"]["post"]["responses"])
    assert {"200", "400", "404"} <= set(paths["/schedules/{name}"]["patch"]["responses"])
    schemas = spec["components"]["schemas"]
    assert set(schemas["Schedule"]["properties"]) == SCHEDULE_FIELDS
    assert {"schedule", "fire_at"} <= set(schemas["Run"]["properties"])


async def test_a_refused_patch_leaves_the_connection_usable(api: httpx.AsyncClient) -> None:
    """A PATCH refused for its name still has its body read: the next request on the same
    kept-alive connection is answered (once, an early answer left the body unread and the
    connection stuck)."""
    host, port = api.base_url.host, api.base_url.port
    assert port is not None
    body = b'{"paused": true}'
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                b"PATCH /schedules/-bad HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(body))
            # give the server the chance to answer before the body arrives
            await trio.sleep(0.2)
            await stream.send_all(body + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            received = b""
            while b'"ok"}' not in received:
                chunk = await stream.receive_some()
                assert chunk, received
                received += chunk
    assert received.startswith(b"HTTP/1.1 400")
    assert received.count(b"HTTP/1.1 ") == 2
