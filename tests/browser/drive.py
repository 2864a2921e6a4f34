"""The browser side of tests/browser/test_dashboard.py, run as its own process.

`python -m tests.browser.drive dashboard|login <base-url>` drives headless Chromium with
Playwright's sync API against a running scheduler; it exits 0 when every expectation held.
It is a separate process because Playwright runs an asyncio loop of its own, which cannot
share a process with trio-asyncio (which the test harness imports). Every browser action
and expectation has a 10 s timeout, so a broken page fails instead of hanging.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from playwright import sync_api
from playwright.sync_api import expect

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "docs" / "screenshots"
TIMEOUT_MS = 10_000
# What Chromium needs as root on a machine without outside network: no sandbox (root),
# and no background connections to Google's services (refused here, slow to fail).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "s3cret-token-for-the-browser-test"


@contextmanager
def open_page(*, width: int = 1280, height: int = 860) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; the browser closes on exit."""
    with sync_api.sync_playwright() as playwright:
        # launch() gives Chromium a new, empty profile directory of its own.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _row(page: Any, task_id: str) -> Any:
    return page.locator(f'tr[data-task-id="{task_id}"]')


def drive_dashboard(base: str) -> None:
    api = httpx.Client(base_url=base, timeout=10)
    with api, open_page() as page:
        # ------------------------------------------------------------ live updates
        page.goto(f"{base}/ui/tasks")
        expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
        page.evaluate("window.__sameDocument = true")  # gone if the page is ever reloaded

        created = api.post("/tasks", json={"tasks": [
            {"command": f"echo report part {i}", "scheduled_at": _in(6)} for i in range(3)
        ] + [{"command": "nightly backup --full", "scheduled_at": _in(3600)}]})
        assert created.status_code == 201, created.text
        *soon, later = [t["task_id"] for t in created.json()["tasks"]]

        # They appear, scheduled, without a reload ...
        for task_id in [*soon, later]:
            expect(_row(page, task_id).locator(".badge")).to_have_text("scheduled")
        # ... and turn completed once the worker ran them, still without a reload.
        for task_id in soon:
            expect(_row(page, task_id).locator(".badge")).to_have_text("completed")
        expect(_row(page, later).locator(".badge")).to_have_text("scheduled")
        assert page.evaluate("window.__sameDocument") is True

        # ------------------------------------------------------------ open a task
        _row(page, soon[0]).get_by_role("link").click()
        expect(page).to_have_url(f"{base}/ui/tasks/{soon[0]}")
        detail = page.locator("#task-live")
        expect(detail.locator(".badge")).to_have_text("completed")
        for label in ["Scheduled", "Created", "Picked", "Started", "Completed"]:
            row = detail.get_by_role("row", name=re.compile(f"^{label}"))
            expect(row.locator("time")).to_have_attribute("datetime", re.compile(r"Z$"))
        expect(detail.get_by_role("row", name=re.compile("^Worker"))).to_contain_text("e2e-w1")
        expect(detail.locator("pre.out")).to_have_text("echo report part 0")
        expect(detail.get_by_role("button", name="Cancel task")).to_have_count(0)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "task.png"), full_page=True)

        # ------------------------------------------------------------ cancel from the page
        page.goto(f"{base}/ui/tasks/{later}")
        expect(detail.locator(".badge")).to_have_text("scheduled")
        page.once("dialog", lambda dialog: dialog.accept())  # hx-confirm asks first
        detail.get_by_role("button", name="Cancel task").click()
        expect(detail.locator(".badge")).to_have_text("cancelled")
        expect(detail.get_by_role("status")).to_have_text("Cancelled.")
        expect(detail.get_by_role("row", name=re.compile("^Cancelled")).locator("time")
               ).to_have_attribute("datetime", re.compile(r"Z$"))
        in_api = api.get(f"/tasks/{later}").json()
        assert in_api["status"] == "cancelled" and in_api["cancelled_at"] is not None

        # ------------------------------------------------------------ filter by status
        page.goto(f"{base}/ui/tasks")
        page.get_by_label("Status").select_option("cancelled")
        page.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(re.compile(r"status=cancelled"))
        rows = page.locator("tr[data-task-id]")
        expect(rows).to_have_count(1)
        expect(_row(page, later)).to_be_visible()
        page.get_by_label("Status").select_option("completed")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(3)
        for task_id in soon:
            expect(_row(page, task_id).locator(".badge")).to_have_text("completed")

        # ------------------------------------------------------------ search by id
        page.get_by_label("Task id").fill(later)
        page.get_by_label("Task id").press("Enter")
        expect(page).to_have_url(f"{base}/ui/tasks/{later}")

        # ------------------------------------------------------------ overview
        page.goto(f"{base}/ui")
        expect(page.locator('[data-status="completed"]')).to_have_text("3")
        expect(page.locator('[data-status="cancelled"]')).to_have_text("1")
        expect(page.get_by_role("row", name=re.compile("^e2e-w1"))).to_contain_text("active")
        expect(page.get_by_role("img", name=re.compile("3 completed"))).to_be_visible()
        # A task the page has not seen yet shows up in the counts without a reload.
        page.evaluate("window.__sameDocument = true")
        assert api.post("/tasks", json={"command": "one more", "scheduled_at": _in(3600)}
                        ).status_code == 201
        expect(page.locator('[data-status="scheduled"]')).to_have_text("1")
        assert page.evaluate("window.__sameDocument") is True
        page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

        # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

        # Phone width: nothing sticks out sideways.
        for path in ["/ui", "/ui/tasks", f"/ui/tasks/{soon[0]}", "/ui/schedules"]:
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(base + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)


def drive_login(base: str) -> None:
    api = httpx.Client(base_url=base, timeout=10,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    with api, open_page() as page:
        created = api.post("/tasks", json={"command": "guarded", "scheduled_at": _in(3600)})
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]

        page.goto(f"{base}/ui/tasks/{task_id}")
        expect(page).to_have_url(re.compile(r"/ui/login\?next="))
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

        page.get_by_label("API token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not the scheduler's API token")
        assert page.context.cookies() == []

        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{base}/ui/tasks/{task_id}")  # back where we wanted to go
        expect(page.locator("#task-live .badge")).to_have_text("scheduled")
        assert TOKEN not in page.url

        [cookie] = page.context.cookies()
        assert cookie["name"] == "tm_ui_session"
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/ui" and TOKEN not in cookie["value"]

        # The cookie opens the dashboard only, not the JSON API.
        as_cookie = httpx.get(f"{base}/tasks/{task_id}",
                              cookies={cookie["name"]: cookie["value"]}, timeout=10)
        assert as_cookie.status_code == 401
        # A cancel without the page's CSRF token is refused, even with the session cookie.
        forged = page.request.post(f"{base}/ui/tasks/{task_id}/cancel", form={"csrf": "x"},
                                   max_redirects=0)
        assert forged.status == 403
        assert api.get(f"/tasks/{task_id}").json()["status"] == "scheduled"

        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Cancel task").click()
        expect(page.locator("#task-live .badge")).to_have_text("cancelled")
        assert api.get(f"/tasks/{task_id}").json()["status"] == "cancelled"

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.goto(f"{base}/ui")
        expect(page).to_have_url(re.compile(r"/ui/login"))




def main(argv: list[str]) -> int:
    scenario, base = argv
    {"dashboard": drive_dashboard, "login": drive_login}[scenario](base)
    print(f"{scenario}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
