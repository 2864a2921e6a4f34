"""API token: with one configured, every route but the health checks wants
`Authorization: Bearer <token>`; without, or with a wrong one, 401 JSON."""

from __future__ import annotations

import httpx
import trio

from tests.api.conftest import open_api
from tests.api.contract import UNKNOWN_ID, assert_error, assert_json, each_case, task_response
from tm.settings import SchedulerSettings

TOKEN = "s3cret"

PROTECTED: dict[str, tuple[str, str, bytes | None]] = {
    "POST /schedule": ("POST", "/schedule", b'{"command": "echo auth"}'),
    "GET /status": ("GET", f"/status?task_id={UNKNOWN_ID}", None),
    "POST /tasks": ("POST", "/tasks", b'{"command": "echo auth"}'),
    "POST /tasks batch": ("POST", "/tasks", b'{"tasks": [{"command": "echo auth"}]}'),
    "GET /tasks": ("GET", "/tasks", None),
    "GET /tasks/<id>": ("GET", f"/tasks/{UNKNOWN_ID}", None),
    "POST /tasks/<id>/cancel": ("POST", f"/tasks/{UNKNOWN_ID}/cancel", None),
    "GET /workers": ("GET", "/workers", None),
}

REFUSED = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer nope"},
    "token with a suffix": {"Authorization": f"Bearer {TOKEN}x"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "bearer without token": {"Authorization": "Bearer"},
    "no scheme": {"Authorization": TOKEN},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "token in another header": {"X-Api-Token": TOKEN},
}


async def test_api_token(shared_database_url: str) -> None:
    with trio.fail_after(30):
        settings = SchedulerSettings(database_url=shared_database_url, api_token=TOKEN)
        async with open_api(settings) as api:

            async def refused(route: tuple[str, str, bytes | None]) -> None:
                method, path, body = route
                for name, headers in REFUSED.items():
                    response = await api.request(method, path, content=body, headers=headers)
                    assert response.status_code == 401, (name, response.status_code)
                    assert_error(response, 401)

            async def allowed(route: tuple[str, str, bytes | None]) -> None:
                method, path, body = route
                for scheme in ("Bearer", "bearer"):  # auth schemes are case-insensitive
                    headers = {"Authorization": f"{scheme} {TOKEN}"}
                    response = await api.request(method, path, content=body, headers=headers)
                    assert response.status_code in (200, 201, 404), (scheme, response.text)
                    assert_json(response)

            await each_case(PROTECTED, refused)
            await each_case(PROTECTED, allowed)

            for path in ("/healthz", "/readyz"):
                response = await api.get(path)
                assert response.status_code == 200, (path, response.text)
                assert_json(response)

            # The right token gives the whole API: create, read back, cancel.
            auth = {"Authorization": f"Bearer {TOKEN}"}
            created = await api.post("/tasks", json={"command": "echo t"}, headers=auth)
            task = task_response(created, 201)
            fetched = await api.get(f"/tasks/{task['task_id']}", headers=auth)
            assert task_response(fetched, 200) == task
            cancelled = await api.post(f"/tasks/{task['task_id']}/cancel", headers=auth)
            assert task_response(cancelled, 200)["status"] == "cancelled"
            assert_error(await api.get(f"/tasks/{task['task_id']}"), 401)


async def test_no_token_configured_means_open(api: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await api.post(
            "/tasks", json={"command": "echo open"}, headers={"Authorization": "Bearer any"}
        )
        task_response(response, 201)
