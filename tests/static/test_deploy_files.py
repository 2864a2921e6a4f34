"""Static checks of the deployment files: compose.yaml, Containerfile, justfile, .ci/run.

Nothing here builds or starts a container (tests/containers does, with `just
test-containers`). What is checked without an engine: the files parse (compose.yaml with
its `${VAR:-default}` variables at their defaults); the services, commands, flags, ports,
environment, healthchecks and stop grace periods agree with each other and with `tm` itself
(click introspection of `tm.cli.main`, the shutdown bound of `tm.runner`); one service
builds the image; the image is multi-stage, non-root, runs `tm`; the justfile finds the
compose command by running it and its recipes run the right commands, in order.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from tm.cli import main as tm_cli
from tm.core.addresses import split_address
from tm.worker import service as worker_service
from tm.worker.service import advertised_address

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
JUST = shutil.which("just", path=str(VENV_BIN)) or shutil.which("just")

POSTGRES_IMAGE = "docker.io/library/postgres:17"
PGDATA = "/var/lib/postgresql/data"
# compose service -> the `tm` subcommand it must run
TM_SERVICES = {
    "migrate": "migrate",
    "scheduler": "scheduler",
    "coordinator": "coordinator",
    "worker": "worker",
}
WILDCARDS = ("0.0.0.0", "::", "")
# Executables a healthcheck may call: python:3.x-slim has no curl or wget.
IMAGE_EXECUTABLES = {"python", "python3", "tm"}


# ------------------------------------------------------------------------------ helpers


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (docker compose does; PyYAML keeps the last).

    Keys brought in by a `<<` merge may be overridden: that is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_VARIABLE = re.compile(
    r"\$(?:(\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """compose's variable substitution ($$, $VAR, ${VAR}, ${VAR:-default}, ${VAR:?error})."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[1]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg, given = match["op"], match["arg"] or "", env.get(name)
        if op in (":-", "-"):
            return (given if given else arg) if op == ":-" else (arg if given is None else given)
        if op in (":?", "?") and not given:
            raise ValueError(f"compose.yaml requires {name}: {arg}")
        return given or ""

    return _VARIABLE.sub(substitute, value)


def test_interpolate_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $SET $$SET", env) == (
        "x d d  x $SET"
    )
    with pytest.raises(ValueError, match="requires UNSET"):
        interpolate("${UNSET:?set it}", env)


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    with open(REPO / "compose.yaml", encoding="utf-8") as f:
        data = yaml.load(f, Loader=_StrictLoader)
    assert isinstance(data, dict)
    result = interpolate(data, env)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as the engines read it with none of its variables set."""
    return load_compose({})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose.get("services")
    assert isinstance(result, dict), "compose.yaml has no services mapping"
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command is not None, "tm service without a command (the image's CMD is --help)"
    args = shlex.split(command) if isinstance(command, str) else command
    assert all(isinstance(a, str) for a in args), f"non-string command argument in {args!r}"
    return list(args)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {k: v for k, v in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def option_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in args (last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def published_ports(service: dict[str, Any]) -> list[tuple[int | None, int]]:
    """(host port or None, container port) for each `ports` entry, short or long syntax."""
    result: list[tuple[int | None, int]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((int(published) if published else None, int(entry["target"])))
            continue
        text = str(entry).split("/")[0]  # drop /tcp
        parts = text.rsplit(":", 2)
        if len(parts) == 1:
            result.append((None, int(parts[0])))
        else:
            result.append((int(parts[-2]) if parts[-2] else None, int(parts[-1])))
    return result


def healthcheck_test(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck")
    assert isinstance(check, dict), "no healthcheck"
    assert not check.get("disable"), "healthcheck disabled"
    test = check.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    assert isinstance(test, list) and len(test) >= 2, f"empty healthcheck test {test!r}"
    assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck test must start CMD/CMD-SHELL: {test!r}"
    return [str(t) for t in test]


def has_registry_host(image: str) -> bool:
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def click_command(name: str) -> click.Command:
    command = tm_cli.commands.get(name)
    assert command is not None, f"`tm {name}` does not exist"
    return command


def accepts_option(command: click.Command, flag: str) -> bool:
    return any(
        flag in p.opts or flag in p.secondary_opts
        for p in command.params
        if isinstance(p, click.Option)
    )


# ------------------------------------------------------------------------------ compose


def test_compose_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", *TM_SERVICES} <= set(services)


def test_every_image_is_fully_qualified(services: dict[str, dict[str, Any]]) -> None:
    # podman has no default registry (or asks); a short name fails or prompts.
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image (podman-compose needs one to share the build)"
        assert has_registry_host(image), f"{name}: image {image!r} has no registry host"


def test_postgres_image_volume_and_healthcheck(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    pg = services["postgres"]
    assert pg["image"] == POSTGRES_IMAGE

    volumes = pg.get("volumes") or []
    named = []
    for volume in volumes:
        if isinstance(volume, dict):
            source, target, kind = volume.get("source"), volume.get("target"), volume.get("type")
        else:
            source, _, rest = str(volume).partition(":")
            target, kind = rest.split(":")[0], "volume"
        if target == PGDATA:
            named.append((source, kind))
    assert len(named) == 1, f"postgres: exactly one mount at {PGDATA} expected, got {volumes!r}"
    source, kind = named[0]
    assert kind == "volume" and source and not source.startswith((".", "/", "~")), (
        f"postgres data must be a named volume, got {source!r}"
    )
    assert source in (compose.get("volumes") or {}), f"volume {source!r} not declared top-level"

    test = " ".join(healthcheck_test(pg)[1:])
    assert re.search(r"\bpg_isready\b", test), f"postgres healthcheck is not pg_isready: {test}"
    # Without a TCP host, pg_isready uses the unix socket, on which the image's temporary
    # first-start (initdb) server already answers while nothing listens on 5432 yet.
    assert re.search(r"(-h|--host)[ =](127\.0\.0\.1|localhost)\b", test), (
        f"postgres healthcheck must probe over TCP: {test}"
    )
    db = environment_of(pg).get("POSTGRES_DB")
    if db and "-d" in test.split():
        assert f"-d {db}" in test, "pg_isready checks a different database than POSTGRES_DB"


def test_no_duplicate_keys_are_accepted_by_the_loader() -> None:
    # The loader above must really catch duplicates, or the compose fixture proves nothing.
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key"):
        yaml.load("a: 1\na: 2\n", Loader=_StrictLoader)
    merged = yaml.load("x: &x {a: 1, b: 2}\ny: {<<: *x, a: 3}\n", Loader=_StrictLoader)
    assert merged["y"] == {"a": 3, "b": 2}


@pytest.mark.parametrize(("service_name", "subcommand"), TM_SERVICES.items())
def test_tm_commands_parse_with_tm_itself(
    services: dict[str, dict[str, Any]],
    service_name: str,
    subcommand: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each service's command is `tm <subcommand> [options]` that tm's own parser accepts.

    The image's ENTRYPOINT is `tm`, so `command` starts with the subcommand. The options are
    parsed by the real click command (unknown flags, bad addresses, bad choices fail), with
    the service's environment in place of ours, so TM_* variables are validated too.
    """
    service = services[service_name]
    assert service.get("entrypoint") in (None, ["tm"], "tm"), "entrypoint must stay `tm`"
    args = command_of(service)
    assert args and args[0] == subcommand, f"{service_name}: command {args!r}"
    command = click_command(subcommand)
    for arg in args[1:]:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            assert accepts_option(command, flag), f"`tm {subcommand}` has no option {flag}"

    for key in list(os.environ):
        if key.startswith("TM_"):
            monkeypatch.delenv(key)
    for key, value in environment_of(service).items():
        monkeypatch.setenv(key, value)
    with command.make_context(f"tm {subcommand}", args[1:]) as ctx:
        assert ctx.params  # parsed, callbacks (address checks) and type conversions ran


def test_tm_commands_are_listed_by_the_installed_console_script() -> None:
    # ENTRYPOINT ["tm"] is the console script pyproject declares; `tm --help` lists them.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["tm"] == "tm.cli:main"
    tm = VENV_BIN / "tm"
    if not tm.exists():
        pytest.skip("tm console script not installed in this environment")
    out = subprocess.run(
        [str(tm), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    listed = set(re.findall(r"^\s{2}(\w[\w-]*)\s", out.split("Commands:", 1)[1], re.M))
    assert set(TM_SERVICES.values()) <= listed


def test_scheduler_and_coordinator_publish_their_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, flag, port in (
        ("scheduler", "--http-addr", 8081),
        ("coordinator", "--grpc-addr", 8080),
    ):
        service = services[name]
        bind = option_value(command_of(service), flag) or environment_of(service).get(
            "TM_HTTP_ADDR" if flag == "--http-addr" else "TM_GRPC_ADDR"
        )
        assert bind, f"{name}: no {flag}; the default binds 127.0.0.1, unreachable from outside"
        host, bound_port = split_address(bind)
        assert host in WILDCARDS, f"{name}: binds {host}, not reachable from other containers"
        assert bound_port == port
        assert (port, port) in published_ports(service), f"{name}: {port} not published"


def test_worker_publishes_nothing_and_advertises_itself(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    # Scaling: host ports, a container_name or host networking would collide between replicas.
    assert not worker.get("ports"), "worker must not publish host ports (it is scaled)"
    assert "container_name" not in worker
    assert worker.get("network_mode") in (None, "bridge")

    args = command_of(worker)
    env = environment_of(worker)
    bind = option_value(args, "--grpc-addr") or env.get("TM_GRPC_ADDR")
    assert bind, "worker without --grpc-addr binds 127.0.0.1: the coordinator cannot dial it"
    host, port = split_address(bind)
    assert host in ("0.0.0.0", "::"), f"worker binds {host}"
    assert option_value(args, "--advertise") is None and "TM_ADVERTISE" not in env, (
        "a fixed advertise address would be the same for every replica"
    )

    coordinator = option_value(args, "--coordinator") or env.get("TM_COORDINATOR")
    assert coordinator, "worker without --coordinator dials 127.0.0.1:8080, itself"
    c_host, c_port = split_address(coordinator)
    assert c_host == "coordinator" and c_host in services
    c_bind = option_value(command_of(services["coordinator"]), "--grpc-addr")
    assert c_bind and split_address(c_bind)[1] == c_port

    # The healthcheck probes the port the worker listens on.
    assert str(port) in " ".join(healthcheck_test(worker)[1:])


@pytest.mark.parametrize("service_name", ["scheduler", "coordinator", "worker"])
def test_tm_healthchecks_probe_the_bound_port(
    services: dict[str, dict[str, Any]], service_name: str
) -> None:
    service = services[service_name]
    test = healthcheck_test(service)
    flag = "--http-addr" if service_name == "scheduler" else "--grpc-addr"
    bind = option_value(command_of(service), flag)
    assert bind
    port = split_address(bind)[1]
    probe = " ".join(test[1:])
    assert re.search(rf"\b{port}\b", probe), f"{service_name}: healthcheck does not probe {port}"
    if service_name == "scheduler":
        assert "/readyz" in probe or "/healthz" in probe

    if test[0] == "CMD":
        executable = test[1]
        assert executable in IMAGE_EXECUTABLES, f"{executable!r} is not in the image"
        if executable.startswith("python") and "-c" in test:
            code = test[test.index("-c") + 1]
            compile(code, f"<{service_name} healthcheck>", "exec")
    else:
        first = shlex.split(test[1])[0]
        assert first in IMAGE_EXECUTABLES, f"{first!r} is not in the image"


TM_IMAGE = "localhost/taskmaster:latest"


def test_one_service_builds_the_image_the_others_run(
    services: dict[str, dict[str, Any]],
) -> None:
    # Each service with `build:` builds its own copy (podman-compose: in parallel).
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["migrate"], f"services with build: {builders}"
    build = services["migrate"]["build"]
    assert build["context"] == "." and build["dockerfile"] == "Containerfile"
    for name in TM_SERVICES:
        assert services[name]["image"] == TM_IMAGE, name
        # Ours, built here: never looked for in a registry.
        assert services[name].get("pull_policy") == "never", name


def test_compose_image_variable(services: dict[str, dict[str, Any]]) -> None:
    other = load_compose({"TM_IMAGE": "registry.example/tm:1"})["services"]
    assert {other[name]["image"] for name in TM_SERVICES} == {"registry.example/tm:1"}


@pytest.mark.parametrize("service_name", ["postgres", "scheduler", "coordinator", "worker"])
def test_long_running_services_have_their_healthcheck_in_compose(
    services: dict[str, dict[str, Any]], service_name: str
) -> None:
    # podman builds OCI images by default, which drop the Containerfile's HEALTHCHECK.
    check = services[service_name]["healthcheck"]
    healthcheck_test(services[service_name])
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{service_name}: healthcheck without {key}"


def seconds(duration: str) -> float:
    """A compose duration (1m30s, 45s, 1.5s, 500ms) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_seconds_parses_compose_durations() -> None:
    assert [seconds(d) for d in ("60s", "1m30s", "500ms", "1h")] == [60, 90, 0.5, 3600]


def grace_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> float:
    """The grace `tm` gives itself when started with this service's command and env."""
    import tm.cli

    captured: list[float] = []
    monkeypatch.setattr(tm.cli, "run", lambda _main, *, grace: captured.append(grace))
    for key in list(os.environ):
        if key.startswith("TM_"):
            monkeypatch.delenv(key)
    result = CliRunner().invoke(tm_cli, command_of(service), env=environment_of(service),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(captured) == 1, captured
    return captured[0]


@pytest.mark.parametrize("service_name", ["scheduler", "coordinator", "worker"])
def test_stop_grace_period_is_above_the_services_shutdown_bound(
    services: dict[str, dict[str, Any]], service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engines SIGKILL after stop_grace_period (10 s if unset): it must exceed the time
    # tm takes at worst, which tm.runner bounds (grace + cleanup, then it exits by itself).
    from tm.runner import shutdown_bound

    service = services[service_name]
    assert "stop_grace_period" in service, f"{service_name}: no stop_grace_period (10 s)"
    bound = shutdown_bound(grace_of(service, monkeypatch))
    assert seconds(service["stop_grace_period"]) > bound, (service_name, bound)


def test_postgres_gets_time_for_its_shutdown_checkpoint(
    services: dict[str, dict[str, Any]],
) -> None:
    assert seconds(services["postgres"]["stop_grace_period"]) >= 30


def test_ports_are_published_on_loopback_unless_told_otherwise(
    services: dict[str, dict[str, Any]],
) -> None:
    # No token by default, and gRPC unauthenticated: not on every interface by default.
    for env, host in (({}, "127.0.0.1"), ({"TM_PUBLISH_ADDR": "0.0.0.0"}, "0.0.0.0")):
        loaded = load_compose({**env, "TM_API_PORT": "18081", "TM_GRPC_PORT": "18080"})
        for name, port in (("scheduler", "18081:8081"), ("coordinator", "18080:8080")):
            assert loaded["services"][name]["ports"] == [f"{host}:{port}"], name


def test_env_file_for_compose_secrets_is_never_committed_or_built_in() -> None:
    # compose.yaml points secrets to a .env file next to it.
    for ignore in (".gitignore", ".containerignore", ".dockerignore"):
        lines = (REPO / ignore).read_text(encoding="utf-8").split()
        assert ".env" in lines, f"{ignore} does not list .env"


def test_every_service_restarts(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        restart = str(service.get("restart", "no"))
        assert restart in ("always", "unless-stopped") or restart.startswith("on-failure"), (
            f"{name}: restart={restart!r}"
        )
    # A one-shot job must not be restarted after it succeeded.
    assert str(services["migrate"]["restart"]).startswith("on-failure")


def test_migrate_runs_migrate_once(services: dict[str, dict[str, Any]]) -> None:
    assert command_of(services["migrate"])[0] == "migrate"
    assert (
        "deploy" not in services["migrate"] or services["migrate"]["deploy"].get("replicas", 1) == 1
    )


def test_database_services_reach_the_postgres_service(
    services: dict[str, dict[str, Any]],
) -> None:
    pg_env = environment_of(services["postgres"])
    user = pg_env.get("POSTGRES_USER", "postgres")
    password = pg_env.get("POSTGRES_PASSWORD")
    db = pg_env.get("POSTGRES_DB", user)
    assert password, "postgres image refuses to start without POSTGRES_PASSWORD"

    users = {
        name
        for name, sub in TM_SERVICES.items()
        if accepts_option(click_command(sub), "--database-url")
    }
    assert users == {"migrate", "scheduler", "coordinator"}
    for name in sorted(users):
        service = services[name]
        assert "--database-url" not in command_of(service), "keep the URL in TM_DATABASE_URL"
        url = environment_of(service).get("TM_DATABASE_URL")
        assert url, f"{name}: no TM_DATABASE_URL (the default is 127.0.0.1, its own container)"
        parts = urlsplit(url)
        assert parts.scheme in ("postgresql", "postgres")
        assert parts.hostname == "postgres", f"{name}: database host {parts.hostname!r}"
        assert parts.port in (None, 5432)
        assert (parts.username, parts.password, parts.path.lstrip("/")) == (user, password, db)
        depends = service.get("depends_on") or []
        assert "postgres" in depends, f"{name}: no depends_on postgres"


def test_servers_retry_the_database_forever() -> None:
    # podman-compose may start them before PostgreSQL is healthy: they must wait, not exit.
    import inspect

    from tm.aio.pg import open_database
    from tm.coordinator import service as coordinator_service
    from tm.scheduler import service as scheduler_service

    assert inspect.signature(open_database).parameters["retry_for"].default == math.inf
    for module in (scheduler_service, coordinator_service):
        source = inspect.getsource(module)
        assert "open_database(" in source and "retry_for" not in source, module.__name__


# ------------------------------------------------------------------------------ advertise


def test_advertised_address_replaces_a_wildcard_with_a_resolvable_address() -> None:
    for wildcard in WILDCARDS:
        host, port = split_address(advertised_address(wildcard, 9090))
        assert port == 9090
        assert host not in WILDCARDS
        assert socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def test_advertised_address_keeps_a_concrete_host() -> None:
    assert advertised_address("10.1.2.3", 9090) == "10.1.2.3:9090"
    assert advertised_address("worker-7", 1) == "worker-7:1"
    assert advertised_address("::1", 9090) == "[::1]:9090"


def test_advertised_address_in_a_container_is_the_container_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Docker and podman map the container's host name to its address in /etc/hosts.
    monkeypatch.setattr(worker_service.socket, "gethostname", lambda: "3f2a9c1b7d0e")
    monkeypatch.setattr(
        worker_service.socket,
        "gethostbyname",
        lambda name: "10.89.0.7" if name == "3f2a9c1b7d0e" else "0.0.0.0",
    )
    assert advertised_address("0.0.0.0", 9090) == "10.89.0.7:9090"


def test_advertised_address_falls_back_when_the_host_name_does_not_resolve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(_name: str) -> str:
        raise socket.gaierror("no such host")

    monkeypatch.setattr(worker_service.socket, "gethostbyname", fail)
    assert advertised_address("0.0.0.0", 9090) == "127.0.0.1:9090"


# ------------------------------------------------------------------------------ Containerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def containerfile() -> list[Instruction]:
    """Instructions of the Containerfile, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(
        (REPO / "Containerfile").read_text(encoding="utf-8").splitlines(), 1
    ):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment inside a continuation
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "Containerfile ends inside a continuation line"
    return result


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in containerfile():
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"line {instruction.line}: {instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


def flags_and_operands(args: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    operands: list[str] = []
    if args.startswith("["):
        return flags, json.loads(args)
    for word in shlex.split(args):
        if word.startswith("--") and not operands:
            key, _, value = word[2:].partition("=")
            flags[key] = value
        else:
            operands.append(word)
    return flags, operands


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                key, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=VALUE"
                env[key] = value.replace("$PATH", env.get("PATH", "$PATH"))
    return env


def stage_name(stage: list[Instruction]) -> str | None:
    words = stage[0].args.split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def base_image(stage: list[Instruction]) -> str:
    _, operands = flags_and_operands(stage[0].args)
    return operands[0]


def test_containerfile_is_multi_stage_on_fully_qualified_images() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    names = {stage_name(s) for s in all_stages} - {None}
    for stage in all_stages:
        image = base_image(stage)
        assert image in names or has_registry_host(image), f"FROM {image}: no registry host"
    # The virtualenv is copied between stages: both must have the same Python at the same path.
    build, final = all_stages[0], all_stages[-1]
    assert base_image(build) == base_image(final)


def test_containerfile_python_satisfies_requires_python() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    spec = pyproject["project"]["requires-python"]
    match = re.search(r"python:(\d+)\.(\d+)", base_image(stages()[-1]))
    assert match, "final base image is not a python:X.Y image"
    version = (int(match[1]), int(match[2]))
    for clause in spec.split(","):
        op, major, minor = re.fullmatch(r"\s*(>=|<|<=|==)\s*(\d+)\.(\d+)\s*", clause).groups()
        bound = (int(major), int(minor))
        assert {
            ">=": version >= bound,
            "<": version < bound,
            "<=": version <= bound,
            "==": version == bound,
        }[op], f"python {version} vs requires-python {spec}"


def test_containerfile_final_stage_runs_tm_as_non_root() -> None:
    final = stages()[-1]
    users = [i for i in final if i.keyword == "USER"]
    assert users, "final stage has no USER: it runs as root"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1].args}: must be numeric, not 0"
    assert not group or group.isdigit(), f"USER {users[-1].args}: group must be numeric"
    # Nothing after USER may need root (RUN would run as the user anyway, but check intent).
    assert all(i.keyword != "USER" for i in final[final.index(users[-1]) + 1 :])

    entrypoints = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert entrypoints[-1].args.startswith("["), "ENTRYPOINT must be exec form (signals)"
    assert json.loads(entrypoints[-1].args) == ["tm"]

    # Exec form looks `tm` up on PATH: the venv copied from the build stage must be on it.
    venv_copies = [
        flags_and_operands(i.args)[1][-1]
        for i in final
        if i.keyword == "COPY" and "from" in flags_and_operands(i.args)[0]
    ]
    path = env_of(final).get("PATH", "").split(":")
    assert any(f"{d.rstrip('/')}/bin" in path for d in venv_copies), (
        f"no copied venv bin on PATH {path}"
    )


def test_containerfile_healthcheck() -> None:
    final = stages()[-1]
    checks = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK"
    args = checks[-1].args
    assert args.upper() != "NONE"
    command = args[args.upper().index("CMD") + 3 :].strip()
    argv = json.loads(command) if command.startswith("[") else shlex.split(command)
    assert argv and argv[0] in IMAGE_EXECUTABLES


def test_containerfile_copies_schema_and_points_tm_schema_dir_at_it() -> None:
    final = stages()[-1]
    destinations = []
    for instruction in final:
        if instruction.keyword != "COPY":
            continue
        flags, operands = flags_and_operands(instruction.args)
        if "from" not in flags and "schema" in [o.rstrip("/") for o in operands[:-1]]:
            destinations.append(operands[-1].rstrip("/"))
    assert destinations, "schema/ is not copied into the final image"
    assert env_of(final).get("TM_SCHEMA_DIR", "").rstrip("/") in destinations
    assert list((REPO / "schema").glob("*.sql")), "schema/ has no migrations"


def test_containerfile_copy_sources_exist() -> None:
    all_stages = stages()
    names = {stage_name(s) for s in all_stages}
    for stage in all_stages:
        for instruction in stage:
            if instruction.keyword not in ("COPY", "ADD"):
                continue
            flags, operands = flags_and_operands(instruction.args)
            assert len(operands) >= 2, f"line {instruction.line}: COPY needs SRC... DEST"
            if "from" in flags:
                assert flags["from"] in names, f"line {instruction.line}: unknown stage"
                source_stage = next(s for s in all_stages if stage_name(s) == flags["from"])
                text = " ".join(i.args for i in source_stage)
                for source in operands[:-1]:
                    assert source in text, f"line {instruction.line}: {source} not made there"
                continue
            for source in operands[:-1]:
                assert (REPO / source).exists(), f"line {instruction.line}: {source} missing"


def test_containerfile_build_stage_has_what_pip_install_needs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    build = stages()[0]
    copied = set()
    for instruction in build:
        if instruction.keyword == "COPY":
            copied.update(o.rstrip("/") for o in flags_and_operands(instruction.args)[1][:-1])
    needed = {"pyproject.toml", "tm", pyproject["project"]["readme"]}
    assert needed <= copied, f"build stage misses {needed - copied}"
    runs = " ".join(i.args for i in build if i.keyword == "RUN")
    assert re.search(r"pip install[^&]* \.(\s|$)", runs), "build stage does not pip install ."


# ------------------------------------------------------------------------------ justfile


def just(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if JUST is None:
        pytest.skip("just is not installed")
    return subprocess.run(
        [JUST, "--justfile", str(REPO / "justfile"), "--working-directory", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture(scope="module")
def justfile_dump() -> dict[str, Any]:
    result = just("--dump", "--dump-format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def body_text(recipe: dict[str, Any]) -> str:
    """A recipe body as text, interpolations written back as {{name}}."""

    def expression(node: Any) -> str:
        if isinstance(node, str):
            return json.dumps(node)
        if isinstance(node, list) and len(node) == 2 and node[0] == "variable":
            return str(node[1])
        assert isinstance(node, list) and node, f"unexpected justfile expression {node!r}"
        return f"{node[0]}({', '.join(expression(child) for child in node[1:])})"

    def fragments(line: list[Any]) -> Iterator[str]:
        for fragment in line:
            if isinstance(fragment, str):
                yield fragment
            else:
                yield "{{" + expression(fragment[0]) + "}}"

    return "\n".join("".join(fragments(line)) for line in recipe["body"])


def test_justfile_recipes(justfile_dump: dict[str, Any]) -> None:
    assert {"up", "down", "test", "lint", "proto", "dev"} <= set(justfile_dump["recipes"])


def test_just_up_scales_workers(justfile_dump: dict[str, Any]) -> None:
    up = justfile_dump["recipes"]["up"]
    params = {p["name"]: p for p in up["parameters"]}
    assert set(params) == {"workers"}
    assert params["workers"]["default"] == "3"
    text = body_text(up)
    assert "{{COMPOSE}} up" in text
    assert re.search(r"--scale worker=\{\{[^}]*\bworkers\b", text), text
    assert "{{COMPOSE}} down --remove-orphans" in body_text(justfile_dump["recipes"]["down"])


def test_compose_default_worker_count_is_just_ups(
    justfile_dump: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    # Plain `podman-compose up` and `just up` start as many workers; `just down` relies on
    # TM_WORKERS naming the replicas podman-compose should stop.
    default = justfile_dump["recipes"]["up"]["parameters"][0]["default"]
    assert str(services["worker"]["scale"]) == default
    raw = (REPO / "compose.yaml").read_text(encoding="utf-8")
    assert re.search(r"scale: \$\{TM_WORKERS:-\d+\}", raw)


FAKE_TOOL = """#!/bin/sh
# Stand-in for {name}: logs how it was called, then behaves as told.
echo "{name} $* | TM_WORKERS=${{TM_WORKERS:-}} BUILDAH_FORMAT=${{BUILDAH_FORMAT:-}}" >> "{log}"
{body}
"""
# podman 4.3 and docker without the plugin: no `compose` subcommand.
NO_COMPOSE = 'if [ "$1" = compose ]; then echo "Error: unrecognized command" >&2; exit 125; fi'


@dataclass
class FakeTools:
    bin: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": str(self.bin), "HOME": str(self.bin.parent), **extra}

    def calls(self) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if " version " not in f"{line} "]


def fake_tools(tmp_path: Path, tools: dict[str, str], where: str = "bin") -> FakeTools:
    """Executables named after `tools` (name -> shell body) in tmp_path/where."""
    folder = tmp_path / where
    folder.mkdir(parents=True, exist_ok=True)
    bash = shutil.which("bash")
    assert bash
    if not (folder / "bash").exists():
        (folder / "bash").symlink_to(bash)
    for name in ("wc", "cat"):  # the recipes' helpers
        found = shutil.which(name)
        assert found
        if not (folder / name).exists():
            (folder / name).symlink_to(found)
    log = tmp_path / "calls.log"
    for name, body in tools.items():
        exe = folder / name
        exe.write_text(FAKE_TOOL.format(name=name, log=log, body=body or "exit 0"))
        exe.chmod(0o755)
    return FakeTools(tmp_path / "bin", log)


@pytest.mark.parametrize(
    ("tools", "in_venv", "expected"),
    [
        pytest.param({"podman": "", "podman-compose": "", "docker": ""}, False,
                     "podman compose", id="podman>=4.7"),
        pytest.param({"podman": NO_COMPOSE, "podman-compose": "", "docker": ""}, False,
                     "podman-compose", id="podman-4.3+podman-compose"),
        pytest.param({"podman": NO_COMPOSE}, True, "VENV/podman-compose",
                     id="podman-4.3+podman-compose-in-.venv"),
        pytest.param({"podman": NO_COMPOSE, "docker": ""}, False, "docker compose",
                     id="podman-4.3+docker-compose-plugin"),
        pytest.param({"docker": NO_COMPOSE, "docker-compose": ""}, False, "docker-compose",
                     id="docker-without-plugin+docker-compose"),
        pytest.param({"podman": NO_COMPOSE, "docker": NO_COMPOSE}, False, "none",
                     id="no-compose-at-all"),
        pytest.param({}, False, "none", id="nothing"),
    ],
)
def test_just_finds_the_compose_command_that_runs(
    tmp_path: Path, tools: dict[str, str], in_venv: bool, expected: str
) -> None:
    fakes = fake_tools(tmp_path, tools)
    venv = tmp_path / "venv"
    if in_venv:
        fake_tools(tmp_path, {"podman-compose": ""}, where="venv/bin")
    result = just("--set", "venv", str(venv), "--evaluate", "COMPOSE", env=fakes.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.replace("VENV", str(venv / "bin"))


@pytest.mark.parametrize(
    ("compose", "engine"),
    [("podman compose", "podman"), ("podman-compose", "podman"),
     ("/x/.venv/bin/podman-compose", "podman"), ("docker compose", "docker"),
     ("docker-compose", "docker")],
)
def test_just_engine_follows_the_compose_command(compose: str, engine: str) -> None:
    result = just("--set", "COMPOSE", compose, "--evaluate", "ENGINE")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == engine


@pytest.mark.parametrize(("args", "workers"), [((), "3"), (("7",), "7"), (("workers=5",), "5")])
def test_just_up_builds_and_scales(tmp_path: Path, args: tuple[str, ...], workers: str) -> None:
    fakes = fake_tools(tmp_path, {"compose": ""})
    result = just("--set", "COMPOSE", str(fakes.bin / "compose"), "up", *args, env=fakes.env())
    assert result.returncode == 0, result.stderr
    assert fakes.calls() == [
        f"compose up -d --build --scale worker={workers} | TM_WORKERS={workers} "
        "BUILDAH_FORMAT=docker"
    ]


@pytest.mark.parametrize(("listed", "workers"), [(5, "5"), (0, "")])
def test_just_down_stops_workers_first_then_the_rest_and_the_orphans(
    tmp_path: Path, listed: int, workers: str
) -> None:
    # The fake engine lists `listed` containers for any `ps` filter.
    ids = "".join(f"echo id{i}; " for i in range(listed))
    fakes = fake_tools(tmp_path, {"compose": "", "podman": f'[ "$1" = ps ] && {{ {ids}:; }}'})
    result = just("--set", "COMPOSE", str(fakes.bin / "compose"),
                  "--set", "ENGINE", str(fakes.bin / "podman"), "down",
                  env=fakes.env(COMPOSE_PROJECT_NAME="proj"))
    assert result.returncode == 0, result.stderr
    calls = [c for c in fakes.calls() if not c.startswith("podman ")]
    listing = [c for c in fakes.calls() if c.startswith("podman ")]
    assert all("label=com.docker.compose.project=proj" in c for c in listing), listing
    expected = ["compose down --remove-orphans"]
    if listed:
        expected[:0] = ["compose stop worker", "compose stop scheduler coordinator"]
    assert [c.split(" |")[0] for c in calls] == expected
    assert all(f"TM_WORKERS={workers} " in c for c in calls), calls


def test_just_up_and_down_without_a_compose_command_say_what_to_install() -> None:
    for recipe in ("up", "down"):
        result = just("--set", "COMPOSE", "none", recipe)
        assert result.returncode != 0
        assert "no compose command runs here" in result.stderr
        assert "podman-compose" in result.stderr and "docker compose" in result.stderr


# ------------------------------------------------------------------------------ CI


def ci_lines() -> list[str]:
    script = REPO / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run is not executable"
    return [
        line.strip()
        for line in script.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_ci_runs_just_test() -> None:
    assert any(re.fullmatch(r"just test(\s.*)?", line) for line in ci_lines())


def test_ci_runs_the_container_test_after_just_test(justfile_dump: dict[str, Any]) -> None:
    lines = ci_lines()
    test = next(i for i, line in enumerate(lines) if re.fullmatch(r"just test(\s.*)?", line))
    assert "just test-containers" in lines[test + 1:], "no container step after `just test`"
    # `just test` itself must not run it (it takes minutes): the module skips unless the
    # recipe asks for it.
    recipe = body_text(justfile_dump["recipes"]["test-containers"])
    assert ".ci/containers/prepare.sh" in recipe and "TM_TEST_CONTAINERS=1" in recipe
    assert "TM_TEST_CONTAINERS" not in body_text(justfile_dump["recipes"]["test"])


@pytest.mark.parametrize("script", ["prepare.sh", "healthd.sh"])
def test_container_scripts_are_executable_bash(script: str) -> None:
    path = REPO / ".ci" / "containers" / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    bash = shutil.which("bash")
    assert bash
    checked = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_stand_ins_exist_for_the_images_compose_and_the_containerfile_use(
    services: dict[str, dict[str, Any]],
) -> None:
    prepare = (REPO / ".ci" / "containers" / "prepare.sh").read_text(encoding="utf-8")
    wanted = {base_image(stages()[0]), base_image(stages()[-1]), services["postgres"]["image"]}
    for image in wanted:
        assert image in prepare, f"prepare.sh has no stand-in for {image}"
    for folder in ("python", "postgres"):
        assert (REPO / ".ci" / "containers" / "standins" / folder / "Containerfile").exists()


def test_the_test_suite_collects_these_tests() -> None:
    # `just test` runs plain pytest: these files must be under its testpaths.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    testpaths = pyproject["tool"]["pytest"]["ini_options"]["testpaths"]
    here = Path(__file__).resolve()
    assert any(here.is_relative_to(REPO / p) for p in testpaths)
