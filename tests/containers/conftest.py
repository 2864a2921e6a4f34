"""The container test runs only when asked (`just test-containers`): it takes minutes.

`just test` collects it and reports it skipped, with the command that runs it. The figures
the test measures are printed at the end of the run (and written to figures.json in its
log directory).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.containers.compose import FIGURES

ENABLE = "TM_TEST_CONTAINERS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE) == "1":
        return
    skip = pytest.mark.skip(
        reason="the compose cluster test runs with `just test-containers` (minutes; "
        ".ci/run runs it after `just test`)"
    )
    for item in items:
        if "tests/containers/" in item.nodeid:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("compose cluster figures")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key}: {json.dumps(value)}")
