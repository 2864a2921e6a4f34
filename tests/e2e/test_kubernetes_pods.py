"""The Kubernetes pods' containers run as real processes with the manifests' environment.

No cluster here, so the kubelet's part is played by the test: each container of the dev
overlay gets the environment the kubelet would build (its Secret's values, the pod IP, the
`$(VAR)` expansion), with only what a cluster provides swapped for loopback: the pod IP is
127.0.0.1, each container port is a free port, the Service name resolves to the port its
targetPort names, and the database is the test's. Then, in the kubelet's order: the init
container (`tm migrate`) runs to completion, the servers start, and every probe the
manifests declare is executed as the kubelet would (httpGet: 200-399; tcpSocket: connects)
until it passes. What this proves:

* the probes' paths and ports are ones the processes really serve, with the API token set;
* a worker's probes pass while no coordinator is up (its liveness would otherwise restart
  it in a loop whenever the coordinators are away);
* the worker registers under its TM_ADVERTISE address and the coordinator reaches it;
* each process exits 0 on SIGTERM within its terminationGracePeriodSeconds.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.cluster import Cluster, Proc, _clean_env, free_port, open_cluster, tm_command
from tests.static import kube
from tm.core.addresses import split_address

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(kube.kubectl() is None, reason="kubectl (kustomize) is not installed"),
]

POD_IP = "127.0.0.1"
PROBE_DEADLINE_S = 30.0
ADDRESS_VARIABLES = ("TM_HTTP_ADDR", "TM_GRPC_ADDR", "TM_METRICS_ADDR", "TM_ADVERTISE")


class Pods:
    """The dev overlay's pods, mapped onto loopback ports."""

    def __init__(self, manifests: kube.Manifests, database_url: str) -> None:
        self.m = manifests
        self.database_url = database_url
        self.ports: dict[tuple[str, int], int] = {}
        for component, container, _init in manifests.containers():
            for port in container.get("ports", []):
                self.ports[(component, port["containerPort"])] = free_port()

    def env(self, component: str, container: str | None = None) -> dict[str, str]:
        env = kube.resolve_env(self.m.container(component, container), self.m.secrets(), POD_IP)
        if "TM_DATABASE_URL" in env:
            env["TM_DATABASE_URL"] = self.database_url
        for name in ADDRESS_VARIABLES:
            if name in env:
                host, port = split_address(env[name])
                env[name] = f"127.0.0.1:{self.ports[(component, port)]}"
                if name == "TM_ADVERTISE":
                    assert host == POD_IP
        if "TM_COORDINATOR" in env:
            env["TM_COORDINATOR"] = f"127.0.0.1:{self.service_port(env['TM_COORDINATOR'])}"
        return env

    def service_port(self, address: str) -> int:
        """What `name:port` of a Service reaches here: the mapped port of its targetPort."""
        name, port = split_address(address)
        service = self.m.get("Service", name)
        (entry,) = [p for p in service["spec"]["ports"] if p["port"] == port]
        selector = {"matchLabels": service["spec"]["selector"]}
        (component,) = [c for c in self.m.workloads()
                        if kube.selector_matches(selector, self.m.pod(c)["metadata"]["labels"])]
        target = kube.container_port(self.m.container(component), entry["targetPort"])
        return self.ports[(component, target)]

    def probe_port(self, component: str, port: int | str) -> int:
        return self.ports[(component, kube.container_port(self.m.container(component), port))]


async def start(cluster: Cluster, name: str, args: list[str], env: dict[str, str]) -> Proc:
    path = cluster.log_dir / f"{name}.log"
    command = [*tm_command(), *args]
    with path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_clean_env(env)
        )
    proc = Proc(name, command, process, path)
    cluster.procs.append(proc)
    return proc


async def probe_once(client: httpx.AsyncClient, port: int, probe: dict[str, Any]) -> bool:
    if "httpGet" in probe:
        with contextlib.suppress(httpx.TransportError):
            response = await client.get(f"http://127.0.0.1:{port}{probe['httpGet']['path']}")
            return 200 <= response.status_code < 400
        return False
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def wait_probes_pass(pods: Pods, cluster: Cluster, component: str, proc: Proc) -> None:
    container = pods.m.container(component)
    kinds = [k for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]
    assert kinds
    for kind in kinds:
        probe = container[kind]
        spec = probe.get("httpGet") or probe["tcpSocket"]
        port = pods.probe_port(component, spec["port"])
        with trio.move_on_after(PROBE_DEADLINE_S):
            while not await probe_once(cluster.client, port, probe):
                assert proc.returncode is None, f"{component} exited:\n{proc.log_tail()}"
                await trio.sleep(0.05)
            continue
        raise AssertionError(f"{component}: {kind} {spec} still failing after "
                             f"{PROBE_DEADLINE_S} s; its log:\n{proc.log_tail()}")


async def test_pods_probes_pass_and_processes_stop_in_their_grace(
    empty_database_url: str, tmp_path: Path
) -> None:
    kubectl = kube.kubectl()
    assert kubectl is not None
    deploy = kube.copy_deploy(tmp_path)
    assert kube.new_secrets(deploy, "dev").returncode == 0
    pods = Pods(kube.Manifests(kube.kustomize(kubectl, deploy / "overlays" / "dev")),
                empty_database_url)

    async with open_cluster(empty_database_url, tmp_path / "logs") as cluster:
        # The worker first: its probes must not need a coordinator.
        worker = await start(cluster, "worker", ["worker"], pods.env("worker"))
        await wait_probes_pass(pods, cluster, "worker", worker)

        # Init containers run to completion before their pod's servers start.
        for component in ("coordinator", "scheduler"):
            init = pods.m.container(component, "migrate")
            with trio.fail_after(60):
                result = await trio.run_process(
                    [*tm_command(), *init["args"]], capture_stdout=True, capture_stderr=True,
                    check=False, env=_clean_env(pods.env(component, "migrate")),
                )
            assert result.returncode == 0, result.stderr.decode(errors="replace")

        coordinator = await start(cluster, "coordinator", ["coordinator"],
                                  pods.env("coordinator"))
        scheduler = await start(cluster, "scheduler", ["scheduler"], pods.env("scheduler"))
        await wait_probes_pass(pods, cluster, "coordinator", coordinator)
        await wait_probes_pass(pods, cluster, "scheduler", scheduler)

        # The probes passed without a token, yet the API requires it.
        api = f"http://127.0.0.1:{pods.probe_port('scheduler', 'http')}"
        token = pods.env("scheduler")["TM_API_TOKEN"]
        assert (await cluster.client.get(f"{api}/workers")).status_code == 401
        advertised = pods.env("worker")["TM_ADVERTISE"]
        headers = {"Authorization": f"Bearer {token}"}
        with trio.fail_after(PROBE_DEADLINE_S):
            while True:
                response = await cluster.client.get(f"{api}/workers", headers=headers)
                assert response.status_code == 200
                addresses = [w["address"] for w in response.json()["workers"]]
                if addresses:
                    break
                await trio.sleep(0.05)
        assert addresses == [advertised]

        # SIGTERM, as the kubelet sends it; each must be gone before its SIGKILL would come.
        for component, proc in (("worker", worker), ("scheduler", scheduler),
                                ("coordinator", coordinator)):
            grace = pods.m.pod(component)["spec"]["terminationGracePeriodSeconds"]
            assert await cluster.stop(proc, timeout=grace) == 0, proc.log_tail()
