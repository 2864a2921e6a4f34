"""Driving the compose cluster as a user does: `just up` / `just down`, curl, the engine's CLI.

`ComposeCluster` runs the project's own justfile recipes in the repository, under a compose
project name of its own and free host ports (so it never touches a user's `taskmaster`
cluster), and reads what a user would: HTTP answers (curl), rows (psql in the postgres
container), container states, exit codes and logs (the engine's CLI). Works with podman
(what CI runs) and docker; the docker paths follow docker's documented formats and are not
exercised here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
JUST = shutil.which("just", path=str(Path(sys.executable).parent)) or shutil.which("just")
WORK = Path(os.environ.get("TM_CONTAINERS_WORK", "/var/tmp/taskmaster-containers"))
IMAGE = "localhost/taskmaster:latest"
TM_SERVICES = ("migrate", "scheduler", "coordinator", "worker")

# Figures measured by the test, printed at the end of the run (see conftest.py).
FIGURES: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], tuple[bool, Any]], timeout: float,
               interval: float = 1.0) -> Any:
    """Poll `check` (-> (done, detail)) until done; fail after `timeout` s with the detail."""
    deadline = time.monotonic() + timeout
    while True:
        done, detail = check()
        if done:
            return detail
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; last seen: {detail}")
        time.sleep(interval)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Run:
    """A finished command: its exit status, output, and how long it took."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def tail(self, lines: int = 25) -> str:
        kept = [line for line in self.output.splitlines()
                if "unable to get systemd connection" not in line]
        return "\n".join(kept[-lines:])


@dataclass
class ComposeCluster:
    project: str
    logs: Path
    api_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    compose: list[str] = field(default_factory=list)
    engine: str = "podman"
    first_up: Run | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ commands

    @property
    def env(self) -> dict[str, str]:
        # The user's TM_* settings (a token, a worker count) must not leak into the cluster.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TM_") and k != "COMPOSE_PROJECT_NAME"}
        env.update(COMPOSE_PROJECT_NAME=self.project, TM_API_PORT=str(self.api_port),
                   TM_GRPC_PORT=str(self.grpc_port), TM_PUBLISH_ADDR="127.0.0.1")
        return env

    def run(self, args: list[str], *, timeout: float, log: str | None = None) -> Run:
        started = time.monotonic()
        try:
            done = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True,
                                  text=True, timeout=timeout)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            code = -1
            output = f"{_text(exc.stdout)}{_text(exc.stderr)}\n(timed out after {timeout} s)"
        result = Run(args, code, output, time.monotonic() - started)
        if log:
            (self.logs / f"{log}.log").write_text(f"$ {shlex.join(args)}\n{output}")
        return result

    def just(self, *args: str, timeout: float = 900, log: str | None = None) -> Run:
        assert JUST, "just is not installed"
        return self.run([JUST, *args], timeout=timeout, log=log)

    def evaluate(self, variable: str) -> str:
        result = self.just("--evaluate", variable, timeout=120)
        assert result.returncode == 0, result.output
        return result.output.strip()

    def compose_cmd(self, *args: str, timeout: float = 300, log: str | None = None) -> Run:
        return self.run([*self.compose, *args], timeout=timeout, log=log)

    def engine_cmd(self, *args: str, timeout: float = 120) -> Run:
        return self.run([self.engine, *args], timeout=timeout)

    def engine_out(self, *args: str, timeout: float = 120) -> str:
        result = self.engine_cmd(*args, timeout=timeout)
        assert result.returncode == 0, (result.args, result.output)
        return "\n".join(line for line in result.output.splitlines()
                         if "unable to get systemd connection" not in line)

    # ------------------------------------------------------------------ containers

    def containers(self, service: str | None = None) -> list[str]:
        """Names of this project's containers (of `service`), in replica order."""
        args = ["ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        names = self.engine_out(*args, "--format", "{{.Names}}").split()
        return sorted(names, key=lambda n: [int(p) if p.isdigit() else p
                                            for p in re.split(r"(\d+)", n)])

    def container(self, service: str, replica: int = 1) -> str:
        names = self.containers(service)
        assert len(names) >= replica, f"{service}: {names}"
        return names[replica - 1]

    def inspect(self, name: str, template: str) -> str:
        return self.engine_out("inspect", "-f", template, name).strip()

    def state(self, name: str) -> dict[str, Any]:
        raw = self.inspect(name, "{{json .State}}")
        state: dict[str, Any] = json.loads(raw)
        state["RestartCount"] = int(self.inspect(name, "{{.RestartCount}}") or 0)
        health = state.get("Health") or state.get("Healthcheck") or {}
        state["health"] = health.get("Status") or "-"
        return state

    def table(self) -> dict[str, dict[str, Any]]:
        """name -> {service, status, exit, health, restarts} for every container."""
        result = {}
        for service in ("postgres", *TM_SERVICES):
            for name in self.containers(service):
                st = self.state(name)
                result[name] = {"service": service, "status": st.get("Status"),
                                "exit": st.get("ExitCode"), "health": st["health"],
                                "restarts": st["RestartCount"]}
        return result

    def healthy(self, workers: int) -> tuple[bool, Any]:
        table = self.table()
        by_service: dict[str, list[dict[str, Any]]] = {}
        for row in table.values():
            by_service.setdefault(row["service"], []).append(row)

        def up(row: dict[str, Any]) -> bool:
            return bool(row["status"] == "running" and row["health"] == "healthy")

        ok = (
            all(len(by_service.get(s, [])) == 1 and up(by_service[s][0])
                for s in ("postgres", "scheduler", "coordinator"))
            and len(by_service.get("worker", [])) == workers
            and all(up(r) for r in by_service["worker"])
            and [(r["status"], r["exit"]) for r in by_service.get("migrate", [])]
            == [("exited", 0)]
        )
        return ok, table

    def logs_of(self, name: str) -> str:
        return self.engine_cmd("logs", name).output

    def events(self, lines: str) -> list[dict[str, Any]]:
        result = []
        for line in lines.splitlines():
            if line.startswith("{"):
                try:
                    result.append(json.loads(line))
                except ValueError:
                    continue
        return result

    def died_since(self, since: float) -> list[tuple[str, int]]:
        """(container, exit status) for each of this project's containers that stopped."""
        start = str(int(since) - 1)
        if self.engine == "podman":
            out = self.engine_out("events", "--since", start, "--stream=false",
                                  "--filter", "event=died",
                                  "--format", "{{.Name}} {{.ContainerExitCode}}")
        else:
            out = self.engine_out("events", "--since", start, "--until", str(int(time.time())),
                                  "--filter", "type=container", "--filter", "event=die",
                                  "--format",
                                  "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}")
        result = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith(f"{self.project}"):
                result.append((parts[0], int(parts[1] or 0)))
        return result

    def kill_process(self, name: str) -> int:
        """SIGKILL the container's main process by its host pid: a crash, not a user stop."""
        pid = int(self.inspect(name, "{{.State.Pid}}"))
        assert pid > 0, f"{name} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def dump_logs(self, tag: str) -> None:
        folder = self.logs / f"containers-{tag}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.containers():
            (folder / f"{name}.log").write_text(self.logs_of(name))

    def remove_everything(self) -> None:
        """Whatever this project left: containers, pod, network, volume (the test's own)."""
        self.compose_cmd("down", "--remove-orphans", "--volumes", timeout=300, log="teardown")
        names = self.containers()
        if names:
            self.engine_cmd("rm", "-f", *names)
        if self.engine == "podman":
            self.engine_cmd("pod", "rm", "-f", f"pod_{self.project}")
        self.engine_cmd("network", "rm", f"{self.project}_default")
        self.engine_cmd("volume", "rm", "-f", f"{self.project}_pgdata")

    def network_exists(self) -> bool:
        return self.engine_cmd("network", "inspect", f"{self.project}_default").returncode == 0

    def volume_exists(self) -> bool:
        return self.engine_cmd("volume", "inspect", f"{self.project}_pgdata").returncode == 0

    # ------------------------------------------------------------------ the API and rows

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def curl(self, method: str, path: str, *args: str) -> tuple[int, Any]:
        """curl the API as a user would; (HTTP status, parsed JSON or text)."""
        result = self.run(["curl", "-sS", "-m", "60", "-X", method, *args,
                           "-w", "\n%{http_code}", self.api + path], timeout=90)
        body, _, code = result.output.rpartition("\n")
        try:
            return int(code), json.loads(body) if body else None
        except ValueError:
            return int(code) if code.isdigit() else 0, body

    def submit_spread(self, prefix: str, count: int, over_s: float,
                      lead_s: float = 2.0) -> list[str]:
        """POST /tasks: `count` tasks `prefix-i`, due evenly over `over_s` from now+lead."""
        start = datetime.now(UTC) + timedelta(seconds=lead_s)
        step = over_s / max(count - 1, 1)
        body = {"tasks": [{"command": f"{prefix}-{i}",
                           "scheduled_at": rfc3339(start + timedelta(seconds=step * i))}
                          for i in range(count)]}
        path = self.logs / f"{prefix}.json"
        path.write_text(json.dumps(body))
        code, answer = self.curl("POST", "/tasks", "-H", "Content-Type: application/json",
                                 "-H", "Prefer: return=minimal", "--data-binary", f"@{path}")
        assert code == 201, (code, answer)
        ids = answer["task_ids"]
        assert isinstance(ids, list) and len(ids) == count
        return [str(i) for i in ids]

    def psql(self, sql: str) -> str:
        out = self.engine_out("exec", self.container("postgres"), "psql", "-U", "postgres",
                              "-d", "taskmaster", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql)
        return out.strip()

    def counts(self, prefix: str) -> dict[str, int]:
        """Rows of `prefix-*` tasks: by status, re-dispatched (attempt > 1), lost (losses)."""
        row = self.psql(
            "select count(*) filter (where status = 'completed'),"
            " count(*) filter (where status <> 'completed'),"
            " count(*) filter (where attempt > 1), count(*) filter (where losses > 0),"
            " count(*) filter (where started_at < scheduled_at)"
            f" from tasks where command like '{prefix}-%'"
        )
        keys = ("completed", "other", "redispatched", "lost", "early")
        return dict(zip(keys, (int(v) for v in row.split("|")), strict=True))

    def executions(self, task_ids: Iterable[str]) -> dict[str, int]:
        """task id -> times a worker finished it, from every worker's log (restarts too)."""
        wanted = set(task_ids)
        seen: dict[str, int] = {}
        for name in self.containers("worker"):
            for event in self.events(self.logs_of(name)):
                if event.get("action") == "task_finished" and event.get("task_id") in wanted:
                    seen[event["task_id"]] = seen.get(event["task_id"], 0) + 1
        return seen

    def log_events(self, name: str, *actions: str) -> list[dict[str, Any]]:
        return [e for e in self.events(self.logs_of(name)) if e.get("action") in actions]


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
