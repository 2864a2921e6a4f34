"""The web dashboard in a real browser: headless Debian Chromium driven by Playwright.

Real processes (tests/e2e/cluster.py) serve the dashboard; tests/browser/drive.py, a
process of its own, drives the browser against them (Playwright's asyncio loop and
trio-asyncio cannot share a process). The browser is Debian's /usr/bin/chromium (packages
chromium and chromium-driver, installed by .ci/run); Playwright never downloads one. The
tests are skipped, saying why, only when that binary (or the playwright package) is missing.

The first test saves docs/screenshots/overview.png and docs/screenshots/task.png (shown in
the README); they are overwritten on every run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.browser.drive import CHROMIUM, TOKEN
from tests.e2e.cluster import REPO, open_cluster

DRIVER_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="needs the playwright package (pip install -e '.[dev]')"),
]


async def drive(scenario: str, base_url: str) -> str:
    """Run tests/browser/drive.py; fails with its output unless it exits 0 in time."""
    with trio.fail_after(DRIVER_TIMEOUT_S + 5):
        done = await trio.run_process(
            [sys.executable, "-m", "tests.browser.drive", scenario, base_url],
            cwd=str(REPO), stdin=subprocess.DEVNULL, capture_stdout=True,
            capture_stderr=True, check=False,
        )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"browser scenario {scenario!r} failed:\n{output}"
    return output


async def test_live_task_list_detail_cancel_filter_and_screenshots(
    database_url: str, tmp_path: Path
) -> None:
    """Tasks scheduled through the API appear and change status on the page without a
    reload; open one; cancel a scheduled one from its page (the API says cancelled);
    filter by status; search by id; the overview's counts, workers and charts; keyboard
    and phone width. Saves the screenshots."""
    async with open_cluster(database_url, tmp_path / "logs") as cluster:
        with trio.fail_after(30):
            await cluster.start_servers(workers=1)
        assert cluster.http_url is not None
        await drive("dashboard", cluster.http_url)
    for name in ["overview.png", "task.png"]:
        assert (REPO / "docs" / "screenshots" / name).stat().st_size > 10_000


async def test_token_login_session_cookie_and_csrf(database_url: str, tmp_path: Path) -> None:
    """With TM_API_TOKEN set: a login form, an HttpOnly SameSite=Strict cookie that opens
    the dashboard but not the API, CSRF-checked cancel, sign-out; the token is never in a
    URL or the scheduler's log."""
    async with open_cluster(database_url, tmp_path / "logs") as cluster:
        with trio.fail_after(30):
            scheduler = await cluster.start_scheduler("--api-token", TOKEN)
        assert cluster.http_url is not None
        await drive("login", cluster.http_url)
        await trio.sleep(0.2)  # the scheduler's last log lines
        assert TOKEN not in scheduler.log_text(), "the API token must never be logged"
