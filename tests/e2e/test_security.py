"""Security: mutual TLS between coordinator and workers; shell commands as another user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
import trio
import trustme

from tests.e2e.cluster import free_port, open_cluster

pytestmark = pytest.mark.e2e


def _identity(ca: trustme.CA, directory: Path, name: str) -> list[str]:
    """Write a certificate for 127.0.0.1 signed by `ca`; returns the worker/coordinator flags."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = (directory / f"{name}.pem", directory / f"{name}.key",
                                    directory / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    return ["--tls-cert", str(cert_path), "--tls-key", str(key_path), "--tls-ca", str(ca_path)]


async def test_tasks_flow_over_mutual_tls_and_strangers_are_refused(
    database_url: str, tmp_path: Path
) -> None:
    ca, stranger_ca = trustme.CA(), trustme.CA()
    coordinator_tls = _identity(ca, tmp_path / "pki", "coordinator")
    worker_tls = _identity(ca, tmp_path / "pki", "worker")
    stranger_tls = _identity(stranger_ca, tmp_path / "stranger", "worker")
    with trio.fail_after(90):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            await cluster.start_scheduler()
            await cluster.start_coordinator(extra=coordinator_tls)
            await cluster.start_worker(worker_id="tls-worker", extra=worker_tls)
            [listed] = await cluster.wait_workers(1)
            assert listed["worker_id"] == "tls-worker"
            task = await cluster.post("/tasks", {"command": "over tls"})
            done = await cluster.wait_task(task["task_id"])
            assert done["status"] == "completed" and done["worker_id"] == "tls-worker"
            assert done["output"] == "over tls"

            # A worker without TLS, and one whose certificate another CA signed, never
            # get registered: the coordinator refuses their handshakes.
            plain = await cluster.start_worker(worker_id="plain-worker")
            stranger = await cluster.start_worker(worker_id="stranger", extra=stranger_tls)

            async def both_refused() -> bool:
                return ("coordinator_retry" in plain.log_text()
                        and "coordinator_retry" in stranger.log_text())

            await cluster.wait_until(both_refused, "both refused workers to retry")
            workers = (await cluster.get("/workers"))["workers"]
            assert [w["worker_id"] for w in workers] == ["tls-worker"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_shell_commands_run_as_the_configured_user(database_url: str, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    with trio.fail_after(60):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            await cluster.start_scheduler()
            await cluster.start_coordinator()
            await cluster.start_worker(executor="shell", extra=["--run-as", "nobody"])
            await cluster.wait_workers(1)
            task = await cluster.post("/tasks", {"command": "id -u; id -g; echo $HOME"})
            done = await cluster.wait_task(task["task_id"])
    assert done["status"] == "completed", done
    uid, gid, home = done["output"].split()
    assert (int(uid), int(gid), home) == (nobody.pw_uid, nobody.pw_gid, nobody.pw_dir)


async def test_metrics_of_every_service_after_real_traffic(
    database_url: str, tmp_path: Path
) -> None:
    coordinator_metrics = f"127.0.0.1:{free_port()}"
    worker_metrics = f"127.0.0.1:{free_port()}"
    with trio.fail_after(60):
        async with open_cluster(database_url, tmp_path / "logs") as cluster:
            await cluster.start_scheduler()
            await cluster.start_coordinator(extra=["--metrics-addr", coordinator_metrics])
            await cluster.start_worker(worker_id="m-worker",
                                       extra=["--metrics-addr", worker_metrics])
            await cluster.wait_workers(1)
            created = await cluster.post("/tasks", {"tasks": [{"command": f"m{i}"}
                                                              for i in range(20)]})
            await cluster.wait_tasks([t["task_id"] for t in created["tasks"]])
            bad = await cluster.client.post(cluster.url("/tasks"), content=b"{")
            assert bad.status_code == 400
            scheduler = (await cluster.client.get(cluster.url("/metrics"))).text
            coordinator = (await cluster.client.get(f"http://{coordinator_metrics}/metrics")).text
            worker = (await cluster.client.get(f"http://{worker_metrics}/metrics")).text

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{series} not found in:\n{text[:3000]}")

    assert value(scheduler, 'tm_tasks{status="completed"}') == 20
    assert value(scheduler, "tm_tasks_created_total") == 20
    assert value(scheduler, 'tm_http_requests_total{method="POST",status="400"}') == 1
    assert value(scheduler, 'tm_db_pool_connections{service="scheduler",state="idle"}') >= 0
    assert value(coordinator, "tm_tasks_dispatched_total") == 20
    assert value(coordinator, "tm_dispatch_latency_seconds_count") == 20
    assert value(coordinator, "tm_claim_batch_size_sum") == 20
    assert value(coordinator, "tm_workers") == 1
    assert value(coordinator, 'tm_worker_free_slots{worker_id="m-worker"}') > 0
    assert value(coordinator, "tm_stale_reports_total") == 0
    assert value(coordinator, "tm_heartbeat_misses_total") == 0
    completed = 'tm_worker_executions_total{outcome="completed",worker_id="m-worker"}'
    assert value(worker, completed) == 20
    assert value(worker, 'tm_worker_queue_depth{worker_id="m-worker"}') == 0
    assert value(worker, 'tm_worker_reports_pending{worker_id="m-worker"}') >= 0
