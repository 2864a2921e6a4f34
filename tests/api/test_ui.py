"""The dashboard's HTTP side without a browser (tests/browser has the browser tests):
redirects, the session cookie, CSRF, the API staying bearer-only, OpenAPI, package data."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import httpx
import trio

from tests.api.conftest import open_api
from tm.scheduler import ui
from tm.scheduler.ui import sessions
from tm.settings import SchedulerSettings

TOKEN = "s3cret-ui"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def test_open_dashboard_pages_cookie_and_csrf(fresh_api: httpx.AsyncClient) -> None:
    api = fresh_api
    with trio.fail_after(30):
        root = await api.get("/")
        assert root.status_code == 303 and root.headers["location"] == "/ui"

        overview = await api.get("/ui")
        assert overview.status_code == 200
        assert overview.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in overview.headers["content-security-policy"]
        cookie = overview.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        assert "<main" in overview.text and "Tasks by status" in overview.text

        task = (await api.post("/tasks", json={"command": "later",
                                                "scheduled_at": "2099-01-01T00:00:00Z"})).json()
        page = await api.get(f"/ui/tasks/{task['task_id']}")
        assert page.status_code == 200 and "Cancel task" in page.text
        csrf = _csrf(page.text)

        # No token, a wrong token, or the token of another session: 403, nothing changes.
        other = httpx.AsyncClient(base_url=str(api.base_url))
        async with other:
            await other.get("/ui")
            others = _csrf((await other.get(f"/ui/tasks/{task['task_id']}")).text)
        for given in [{}, {"csrf": "0" * 64}, {"csrf": others}]:
            refused = await api.post(f"/ui/tasks/{task['task_id']}/cancel", data=given)
            assert refused.status_code == 403, given
        assert (await api.get(f"/tasks/{task['task_id']}")).json()["status"] == "scheduled"

        done = await api.post(f"/ui/tasks/{task['task_id']}/cancel", data={"csrf": csrf})
        assert done.status_code == 303
        assert done.headers["location"] == f"/ui/tasks/{task['task_id']}"
        assert (await api.get(f"/tasks/{task['task_id']}")).json()["status"] == "cancelled"
        again = await api.post(f"/ui/tasks/{task['task_id']}/cancel", data={"csrf": csrf},
                               headers={"HX-Request": "true"})
        assert again.status_code == 200 and "already finished as cancelled" in again.text

        listed = await api.get("/ui/tasks", params={"status": "cancelled"})
        assert task["task_id"] in listed.text
        assert task["task_id"] not in (await api.get("/ui/fragments/tasks",
                                                     params={"status": "completed"})).text
        bad = await api.get("/ui/tasks", params={"status": "nope"})
        assert bad.status_code == 400 and "unknown status" in bad.text
        search = await api.get("/ui/tasks", params={"q": task["task_id"]})
        assert search.status_code == 303
        assert search.headers["location"] == f"/ui/tasks/{task['task_id']}"
        assert (await api.get("/ui/tasks", params={"q": "x"})).status_code == 400
        assert (await api.get(f"/ui/tasks/{uuid.uuid4()}")).status_code == 404
        for path in ["/ui/fragments/overview", "/ui/fragments/charts", "/ui/schedules"]:
            assert (await api.get(path)).status_code == 200, path

        # The JSON API's 404 for unknown routes is unchanged, under /ui too.
        missing = await api.get("/ui/nope")
        assert missing.status_code == 404 and "error" in missing.json()

        paths = (await api.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p == "/" or p.startswith("/ui")]


async def test_token_login_and_api_stays_bearer_only(shared_database_url: str) -> None:
    settings = SchedulerSettings(database_url=shared_database_url, api_token=TOKEN)
    with trio.fail_after(30):
        async with open_api(settings) as api:
            first = await api.get("/ui/tasks?status=failed")
            assert first.status_code == 303
            assert first.headers["location"] == "/ui/login?next=%2Fui%2Ftasks%3Fstatus%3Dfailed"
            fragment = await api.get("/ui/fragments/overview", headers={"HX-Request": "true"})
            assert fragment.status_code == 401 and fragment.headers["HX-Redirect"]
            assert (await api.get("/ui/static/ui.css")).status_code == 200

            wrong = await api.post("/ui/login", data={"token": "nope", "next": "/ui"})
            assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
            login = await api.post("/ui/login", data={"token": TOKEN,
                                                      "next": "https://evil.example/"})
            assert login.status_code == 303 and login.headers["location"] == "/ui"
            assert TOKEN not in login.headers["set-cookie"]
            assert (await api.get("/ui")).status_code == 200  # the client keeps the cookie
            # The cookie is no bearer token: the API still says 401.
            assert (await api.get("/tasks")).status_code == 401
            as_cookie = {"Cookie": f"{sessions.COOKIE}={api.cookies[sessions.COOKIE]}"}
            assert (await api.get("/tasks", headers=as_cookie)).status_code == 401

            out = await api.post("/ui/logout", data={"csrf": _csrf((await api.get("/ui")).text)})
            assert out.status_code == 303 and out.headers["location"] == "/ui/login"
            assert (await api.get("/ui")).status_code == 303


def test_session_cookies_are_signed_and_expire() -> None:
    key = sessions.session_key(TOKEN)
    now = time.time()
    sid, cookie = sessions.mint_session(key, now)
    assert sessions.verify_session(key, cookie, now) == sid
    assert sessions.verify_session(key, cookie, now + sessions.SESSION_TTL_S + 1) is None
    assert sessions.verify_session(sessions.session_key("another token"), cookie, now) is None
    body, _, mac = cookie.rpartition(".")
    assert sessions.verify_session(key, f"{body}.{'0' * len(mac)}", now) is None
    sid_part, expiry, mac = cookie.split(".")
    assert sessions.verify_session(key, f"{sid_part}.{int(expiry) + 999}.{mac}", now) is None
    assert sessions.csrf_token(key, sid) != sessions.csrf_token(key, sid + "x")
    assert sessions.safe_next("//evil.example") == "/ui"
    assert sessions.safe_next("/ui/tasks?status=failed") == "/ui/tasks?status=failed"


def test_templates_and_static_files_are_package_data() -> None:
    """A non-editable install must carry them: pyproject's package-data names these."""
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"tm.scheduler.ui" = ["templates/*.html", "static/*", "static/vendor/*"]' in pyproject
    here = Path(ui.__file__).parent
    assert (here / "templates" / "base.html").exists()
    assert (here / "static" / "vendor" / "htmx-2.0.8.min.js").exists()
    assert "Zero-Clause BSD" in (here / "static" / "vendor" / "htmx-LICENSE.txt").read_text()
