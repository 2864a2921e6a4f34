"""The compose cluster for real: the project's `just up` / `just down` on a container engine.

One cluster for the module, brought up with `just up workers=3` under a compose project
name of its own and free host ports; the tests run in order against it:

1. `just up` builds the image once, every service becomes healthy, tm runs as non-root and
   publishes its ports on loopback only.
2. Tasks submitted with curl (`POST /schedule`, a batch on `POST /tasks`) all complete.
3. A worker's process killed by its host pid mid-batch (a crash: `podman kill` would count
   as a user stop, which `restart: unless-stopped` does not undo): nothing is lost, the
   engine restarts it, it rejoins.
4. The coordinator restarted with the compose tool mid-batch: it stops cleanly (exit 0),
   the workers come back to it, nothing is lost; nothing runs twice once the coordinator
   has issue 20's lease rules (LEASE_RULES_LANDED), until then re-runs are an xfail.
5. `just down` stops every service with exit 0 (no SIGKILL) and removes every container
   and the network, keeping the data volume; `just up` again finds the data and runs tasks.

Needs a working engine (`just test-containers` runs .ci/containers/prepare.sh first, which
installs podman where it can); skipped, saying why, where none runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.containers.compose import (
    FIGURES,
    IMAGE,
    JUST,
    REPO,
    WORK,
    ComposeCluster,
    wait_until,
)

WORKERS = 3
TM_UID = "10001"
HEALTHY_S = 240  # every service healthy after `just up` (first start runs migrations)
LEASE_S = 30  # the coordinator's default lease: recovered tasks may wait for it
# A podman build prints "[1/2] STEP 1/7: FROM ..." as it starts (a single-stage one,
# "STEP 1/7: FROM ..."): one such line per build of the image.
BUILD_STARTS = re.compile(r"^(\[1/\d+\] )?STEP 1/\d+: FROM ", re.M)


def skip_reason() -> str | None:
    """Why no container engine can run the cluster here, or None."""
    if JUST is None:
        return "just is not installed (`just install`)"
    if shutil.which("curl") is None:
        return "curl is not installed (the test submits tasks with it)"
    probe = subprocess.run([JUST, "--evaluate", "COMPOSE"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    compose = probe.stdout.strip()
    if probe.returncode != 0 or compose in ("", "none"):
        return ("no compose command runs here (podman compose, podman-compose, docker "
                "compose); .ci/containers/prepare.sh and `just install` provide one")
    engine = "docker" if compose.startswith("docker") else "podman"
    try:
        info = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no container engine runs here: {engine} info: {exc}"
    if info.returncode != 0:
        detail = (info.stderr.strip().splitlines() or ["failed"])[-1]
        return f"no container engine runs here: {engine} info: {detail}"
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[ComposeCluster]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    project = f"tmtest{os.getpid()}"
    logs = WORK / "logs" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{project}"
    logs.mkdir(parents=True, exist_ok=True)
    FIGURES["logs"] = str(logs)
    cluster = ComposeCluster(project=project, logs=logs)
    compose = cluster.evaluate("COMPOSE")
    cluster.compose = shlex.split(compose)
    cluster.engine = cluster.evaluate("ENGINE")
    FIGURES["compose"] = compose
    FIGURES["engine"] = cluster.engine_out("--version")

    healthd = None
    if cluster.engine == "podman" and not Path("/run/systemd/system").is_dir():
        # Podman 4.x runs healthchecks from systemd timers; without systemd, this does.
        healthd = subprocess.Popen(
            [str(REPO / ".ci/containers/healthd.sh"),
             f"com.docker.compose.project={project}"],
            env={**os.environ, "TM_HEALTHD_PARENT": str(os.getpid())},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    started = time.monotonic()
    try:
        up = cluster.just("up", f"workers={WORKERS}", timeout=1800, log="up-1")
        FIGURES["just up (first) s"] = round(up.seconds, 1)
        cluster.first_up = up
        assert up.returncode == 0, f"just up failed:\n{up.tail()}"
        yield cluster
    finally:
        cluster.dump_logs("final")
        cluster.remove_everything()
        if healthd is not None:
            healthd.terminate()
            healthd.wait(timeout=30)
        FIGURES["container test s"] = round(time.monotonic() - started, 1)
        (logs / "figures.json").write_text(json.dumps(FIGURES, indent=1))


def image_builds(output: str) -> int:
    return len(BUILD_STARTS.findall(output))


def counts_builds(cluster: ComposeCluster) -> bool:
    """podman-compose runs `podman build`, whose output we can count; docker compose and
    docker-compose (also behind `podman compose`) print BuildKit's. The same-image check
    below holds for all of them."""
    return "podman-compose" in FIGURES.get("compose", "")


# ---------------------------------------------------------------------------------- 1


def test_up_builds_one_image_and_every_service_becomes_healthy(
    cluster: ComposeCluster,
) -> None:
    up = cluster.first_up
    assert up is not None
    if counts_builds(cluster):
        assert image_builds(up.output) == 1, f"image builds in `just up`:\n{up.tail(60)}"
    started = time.monotonic()
    wait_until("every service healthy, migrate done", lambda: cluster.healthy(WORKERS),
               HEALTHY_S, interval=2)
    FIGURES["healthy after just up s"] = round(time.monotonic() - started, 1)

    image = cluster.engine_out("image", "inspect", "-f", "{{.Id}}", IMAGE).strip()
    for service in ("migrate", "scheduler", "coordinator", "worker"):
        for name in cluster.containers(service):
            assert cluster.inspect(name, "{{.Image}}").removeprefix("sha256:") == \
                image.removeprefix("sha256:"), f"{name} runs another image than {IMAGE}"
            if service != "migrate":
                uid = cluster.engine_out("exec", name, "id", "-u").strip()
                assert uid == TM_UID, f"{name} runs as uid {uid}"

    # Published on loopback only (TM_PUBLISH_ADDR): the API has no token by default.
    for service, port in (("scheduler", cluster.api_port), ("coordinator", cluster.grpc_port)):
        mapping = cluster.engine_out("port", cluster.container(service)).split()
        assert f"127.0.0.1:{port}" in mapping, (service, mapping)
        assert not any(m.startswith("0.0.0.0:") for m in mapping), (service, mapping)


# ---------------------------------------------------------------------------------- 2


def test_tasks_submitted_with_curl_complete(cluster: ComposeCluster) -> None:
    # curl -d sends application/x-www-form-urlencoded: the API takes JSON anyway.
    code, task = cluster.curl("POST", "/schedule", "-d", '{"command": "hello"}')
    assert code == 200 and task["status"] == "scheduled", (code, task)

    def finished() -> tuple[bool, object]:
        code, got = cluster.curl("GET", f"/status?task_id={task['task_id']}")
        return code == 200 and got["status"] == "completed", got

    done = wait_until("hello completed", finished, 60)
    assert done["output"] == "hello" and done["exit_code"] == 0, done

    cluster.submit_spread("batch", 1000, over_s=0)
    wait_until("1,000 tasks completed", lambda: (
        (c := cluster.counts("batch"))["completed"] == 1000, c), 120)
    assert cluster.counts("batch")["early"] == 0

    code, answer = cluster.curl("GET", "/workers")
    assert code == 200
    assert len(answer["workers"]) == WORKERS, answer
    assert {w["state"] for w in answer["workers"]} == {"active"}, answer


# ---------------------------------------------------------------------------------- 3


def test_a_worker_killed_mid_batch_loses_nothing_and_comes_back(
    cluster: ComposeCluster,
) -> None:
    ids = cluster.submit_spread("crash", 1500, over_s=15)
    wait_until("a third of the batch completed", lambda: (
        (c := cluster.counts("crash"))["completed"] >= 500, c), 60, interval=0.5)
    victim = cluster.container("worker", 2)
    restarts = cluster.state(victim)["RestartCount"]
    killed_at = time.monotonic()
    cluster.kill_process(victim)
    FIGURES["worker crash: completed before the kill"] = cluster.counts("crash")["completed"]

    wait_until("every task completed after the crash", lambda: (
        (c := cluster.counts("crash"))["completed"] == 1500, c), LEASE_S + 150)
    FIGURES["worker crash: all completed after s"] = round(time.monotonic() - killed_at, 1)
    counts = cluster.counts("crash")
    assert counts["other"] == 0 and counts["early"] == 0, counts

    # restart: unless-stopped brings a crashed container back (not a `podman kill`ed one).
    wait_until("the engine restarted the killed worker", lambda: (
        (s := cluster.state(victim))["Status"] == "running" and s["RestartCount"] > restarts,
        s), 120)

    def three_active() -> tuple[bool, object]:
        code, answer = cluster.curl("GET", "/workers")
        workers = answer.get("workers", []) if code == 200 else []
        return len(workers) == WORKERS and {w["state"] for w in workers} == {"active"}, answer

    wait_until("/workers lists 3 active workers again", three_active, 60)
    runs = cluster.executions(ids)
    FIGURES["worker crash: tasks run twice (at-least-once)"] = sum(
        1 for n in runs.values() if n > 1)
    FIGURES["worker crash: tasks re-dispatched / recovered from the lost worker"] = [
        counts["redispatched"], counts["lost"]]


# ---------------------------------------------------------------------------------- 4


# Issue 20's lease rules (a new coordinator recovers no lease in its first lease term,
# workers reconnect with fresh name resolution) are not in the coordinator yet: until they
# are, a restart slower than the lease may run a few tasks twice (seen once in six runs),
# and the test reports that as an expected failure. Set True when they land: a coordinator
# restart must then run nothing twice (DESIGN.md, "Coordinator restart or network blip").
LEASE_RULES_LANDED = False


def test_a_coordinator_restart_loses_nothing(cluster: ComposeCluster) -> None:
    ids = cluster.submit_spread("restart", 1500, over_s=15)
    wait_until("a third of the batch completed", lambda: (
        (c := cluster.counts("restart"))["completed"] >= 500, c), 60, interval=0.5)
    coordinator = cluster.container("coordinator")
    since = time.time()
    restarted = cluster.compose_cmd("restart", "coordinator", timeout=120, log="restart")
    restarted_at = time.monotonic()
    assert restarted.returncode == 0, restarted.tail()
    FIGURES["coordinator restart: command s"] = round(restarted.seconds, 1)
    stops = [code for name, code in cluster.died_since(since) if name == coordinator]
    assert stops == [0], f"the coordinator's stop: exit statuses {stops} (137: killed)"

    wait_until("every task completed after the restart", lambda: (
        (c := cluster.counts("restart"))["completed"] == 1500, c), LEASE_S + 150)
    FIGURES["coordinator restart: all completed after s"] = round(
        time.monotonic() - restarted_at, 1)

    def workers_back() -> tuple[bool, object]:
        events = cluster.log_events(coordinator, "coordinator_ready", "worker_registered")
        ready = [e for e in events if e["action"] == "coordinator_ready"]
        if len(ready) < 2:  # the first start's, then the restart's
            return False, events[-3:]
        last_ready = ready[-1]["timestamp"]
        back = {e["worker_id"]: e["timestamp"] for e in events
                if e["action"] == "worker_registered" and e["timestamp"] >= last_ready}
        return len(back) == WORKERS, (last_ready, back)

    last_ready, back = wait_until("all workers registered with the new coordinator",
                                  workers_back, 120)
    last_back = _parse(max(back.values()))
    FIGURES["coordinator restart: every worker back, s after the restart began"] = round(
        last_back.timestamp() - since, 1)
    FIGURES["coordinator restart: every worker back, s after the new one was ready"] = round(
        (last_back - _parse(last_ready)).total_seconds(), 1)
    counts = cluster.counts("restart")
    assert counts["other"] == 0 and counts["early"] == 0, counts

    twice = sorted(t for t, n in cluster.executions(ids).items() if n > 1)
    FIGURES["coordinator restart: tasks run twice"] = len(twice)
    FIGURES["coordinator restart: tasks re-dispatched"] = counts["redispatched"]
    if twice and not LEASE_RULES_LANDED:
        pytest.xfail(f"{len(twice)} tasks ran twice across the restart: issue 20's lease "
                     f"bug, e.g. {twice[:3]}")
    assert not twice, f"{len(twice)} tasks ran twice across a coordinator restart: {twice[:5]}"


# ---------------------------------------------------------------------------------- 5


def down_cleanly(cluster: ComposeCluster, tag: str) -> float:
    """`just down`: every running service exits 0, nothing is left but the data volume."""
    running = {name for name, row in cluster.table().items() if row["status"] == "running"}
    assert {"postgres", "scheduler", "coordinator"} <= {
        cluster.table()[n]["service"] for n in running}
    since = time.time()
    down = cluster.just("down", timeout=600, log=f"down-{tag}")
    assert down.returncode == 0, down.tail()
    stops = dict(cluster.died_since(since))
    assert set(stops) >= running, f"not stopped: {running - set(stops)}"
    bad = {name: code for name, code in stops.items() if code != 0}
    assert not bad, f"services that did not exit 0 on `just down` (137: killed): {bad}"
    assert cluster.containers() == [], "containers left by `just down`"
    assert not cluster.network_exists(), "network left by `just down`"
    assert cluster.volume_exists(), "`just down` removed the data volume"
    return down.seconds


def test_down_stops_every_service_cleanly_and_up_again_keeps_the_data(
    cluster: ComposeCluster,
) -> None:
    code, task = cluster.curl("POST", "/tasks", "-d", '{"command": "before-down"}')
    assert code == 201, task
    wait_until("before-down completed", lambda: (
        (s := cluster.psql(f"select status from tasks where task_id = '{task['task_id']}'"))
        == "completed", s), 60)
    total = cluster.psql("select count(*) from tasks")
    assert cluster.psql("select count(*) from tasks where status <> 'completed'") == "0"

    FIGURES["just down s"] = round(down_cleanly(cluster, "1"), 1)

    up = cluster.just("up", f"workers={WORKERS}", timeout=1800, log="up-2")
    assert up.returncode == 0, up.tail()
    FIGURES["just up (again, image cached) s"] = round(up.seconds, 1)
    if counts_builds(cluster):
        assert image_builds(up.output) == 1, up.tail(60)
    wait_until("every service healthy again", lambda: cluster.healthy(WORKERS), HEALTHY_S,
               interval=2)
    assert cluster.psql("select count(*) from tasks") == total
    code, kept = cluster.curl("GET", f"/tasks/{task['task_id']}")
    assert code == 200 and kept["status"] == "completed", kept
    assert "Skipping initialization" in cluster.logs_of(cluster.container("postgres"))

    code, after = cluster.curl("POST", "/tasks", "-d", '{"command": "after-up"}')
    assert code == 201, after
    wait_until("after-up completed", lambda: (
        (s := cluster.curl("GET", f"/tasks/{after['task_id']}")[1].get("status"))
        == "completed", s), 60)

    FIGURES["just down (second) s"] = round(down_cleanly(cluster, "2"), 1)


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
