"""The OpenAPI document describes the real API: schemathesis fuzzes a live scheduler and
finds no server error, no undocumented status code and no response off its schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.e2e.cluster import open_cluster

pytestmark = pytest.mark.e2e

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
])


def _schemathesis() -> list[str]:
    script = Path(sys.executable).with_name("schemathesis")
    if script.exists():
        return [str(script)]
    found = shutil.which("schemathesis")
    assert found, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    return [found]


async def test_openapi_document_lists_every_route(database_url: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            await cluster.start_scheduler()
            spec = (await cluster.client.get(f"{cluster.http_url}/openapi.json")).json()
            docs = await cluster.client.get(f"{cluster.http_url}/docs")
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ("/schedule", "/status", "/tasks", "/tasks/{task_id}",
                 "/tasks/{task_id}/cancel", "/workers", "/healthz", "/readyz"):
        assert path in paths, f"{path} missing from /openapi.json"
    create = paths["/tasks"]["post"]
    assert {"200", "201", "400", "413"} <= set(create["responses"])
    assert "requestBody" in create
    headers = {p["name"].lower(): p for p in create["parameters"] if p["in"] == "header"}
    assert "return=minimal" in headers["prefer"]["description"]
    task_schema = spec["components"]["schemas"]["Task"]
    assert "task_id" in task_schema["properties"] and "worker_id" in task_schema["properties"]
    assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_schemathesis_finds_no_server_errors_or_schema_violations(
    database_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(420):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            await cluster.start_scheduler()
            result = await trio.run_process(
                [*_schemathesis(), "run", f"{cluster.http_url}/openapi.json",
                 "--checks", CHECKS, "--phases", "examples,fuzzing",
                 "--max-examples", "8", "--request-timeout", "30", "--seed", "20261127",
                 "--workers", "1"],
                capture_stdout=True, stderr=subprocess.STDOUT, check=False,
            )
    report = result.stdout.decode(errors="replace")
    assert result.returncode == 0, f"schemathesis found problems:\n{report[-6000:]}"
    assert "passed" in report
