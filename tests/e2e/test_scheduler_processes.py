"""`tm scheduler --processes N`: N real processes serving one address (SO_REUSEPORT).

Which process serves what is read from /proc, not guessed from timing: a process's
sockets are the `socket:[inode]` links in /proc/<pid>/fd, and /proc/net/tcp gives each
inode's local port and state, so "listens on the port" and "holds an accepted connection
on the port" are facts per process. Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import click
import httpx
import pytest
import trio

from tests.e2e.cluster import Cluster, Proc, open_cluster, query_database, tm_command
from tm.cli import main as tm_cli

pytestmark = pytest.mark.e2e

TOKEN = "processes-token"
LISTEN, ESTABLISHED = "0A", "01"  # /proc/net/tcp states


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(database_url, tmp_path / "logs") as running:
        yield running


@pytest.fixture
def reap() -> Iterator[set[int]]:
    """Pids to SIGKILL after the test if they are still alive (children that outlived it)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------ /proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running (a zombie has exited: it only waits to be reaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def tcp_sockets(state: str) -> dict[int, int]:
    """inode -> local port of the IPv4 TCP sockets in `state`."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == state:
            found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def listening_port(pid: int) -> int | None:
    """The port `pid` listens on (the scheduler has one listening socket), if any yet."""
    listening = tcp_sockets(LISTEN)
    ports = {listening[i] for i in socket_inodes(pid) if i in listening}
    assert len(ports) <= 1, ports
    return ports.pop() if ports else None


def pids_holding(pids: set[int], port: int, state: str) -> set[int]:
    """Those of `pids` that hold a socket in `state` whose local port is `port`."""
    sockets = tcp_sockets(state)
    return {
        pid for pid in pids
        if any(sockets.get(inode) == port for inode in socket_inodes(pid))
    }


# ------------------------------------------------------------------------------ helpers


def port_of(proc: Proc) -> int:
    assert proc.address is not None
    return int(proc.address.rsplit(":", 1)[1])


async def wait_serving(cluster: Cluster, parent: Proc, count: int, reap: set[int]) -> set[int]:
    """Wait until `parent` and `count - 1` children listen on one port; the children."""

    async def check() -> set[int] | None:
        port = listening_port(parent.process.pid)
        children = children_of(parent.process.pid)
        reap.update(children)
        if port is None or len(children) != count - 1:
            return None
        if pids_holding(children, port, LISTEN) != children:
            return None
        if parent.address is None:
            parent.address = f"127.0.0.1:{port}"
        return children

    return await cluster.wait_until(check, f"{count} processes listening", timeout=30)


async def wait_gone(cluster: Cluster, pids: set[int], waiting_for: str) -> None:
    async def check() -> bool:
        return not any(alive(pid) for pid in pids)

    await cluster.wait_until(check, waiting_for, timeout=20)


async def run_tm(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    with trio.fail_after(30):
        return await trio.run_process([*tm_command(), *args], env={**clean, **(env or {})},
                                      stdin=subprocess.DEVNULL, capture_stdout=True,
                                      capture_stderr=True, check=False)


# ------------------------------------------------------------------------------ tests


async def test_processes_share_the_port_and_store_every_task(
    cluster: Cluster, database_url: str, reap: set[int]
) -> None:
    """32 keep-alive connections land on both processes (the kernel spreads them by a
    hash: all 32 on one process has a chance of 2^-31); both enforce the API token, so the
    children got the parent's options; every task posted concurrently is stored once."""
    connections, per_connection = 32, 10
    with trio.fail_after(90):
        parent = await cluster.start_scheduler("--processes", "2", "--api-token", TOKEN)
        children = await wait_serving(cluster, parent, 2, reap)
        port = port_of(parent)
        run = uuid.uuid4().hex[:8]
        created: list[str] = []

        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=20,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)))
                for _ in range(connections)
            ]

            async def post_tasks(index: int, client: httpx.AsyncClient) -> None:
                refused = await client.post("/tasks", json={"command": "no token"})
                assert refused.status_code == 401, refused.text
                for n in range(per_connection):
                    response = await client.post(
                        "/tasks", json={"command": f"procs {run} {index} {n}"},
                        headers={"Authorization": f"Bearer {TOKEN}"})
                    assert response.status_code == 201, response.text
                    created.append(response.json()["task_id"])

            async with trio.open_nursery() as nursery:
                for index, client in enumerate(clients):
                    nursery.start_soon(post_tasks, index, client)

            # Every connection is still open: see which process accepted each.
            serving = pids_holding({parent.process.pid, *children}, port, ESTABLISHED)
            assert serving == {parent.process.pid, *children}, (serving, children)

        assert len(set(created)) == connections * per_connection
        [row] = await query_database(
            database_url, "SELECT count(*), count(DISTINCT command) FROM tasks "
            "WHERE command LIKE $1", f"procs {run} %")
        assert tuple(row) == (connections * per_connection, connections * per_connection)
        assert await cluster.stop(parent) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_parent_and_every_child(
    cluster: Cluster, reap: set[int], sig: signal.Signals
) -> None:
    """Port 0: the parent binds first and the children bind the port it got. SIGTERM or
    SIGINT to the parent: every process stops gracefully, the exit status is 0."""
    with trio.fail_after(90):
        parent = await cluster.spawn("scheduler", [
            "scheduler", "--processes", "3", "--http-addr", "127.0.0.1:0",
            "--database-url", cluster.database_url])
        children = await wait_serving(cluster, parent, 3, reap)
        cluster.http_url = f"http://{parent.address}"
        assert (await cluster.get("/healthz")) is not None
        # Children have their own process group: a terminal's Ctrl-C reaches only the
        # parent, so each child is sent one signal (a second would mean "stop at once").
        assert all(os.getpgid(child) != os.getpgid(parent.process.pid) for child in children)

        assert await cluster.stop(parent, sig, timeout=20) == 0
        # The parent waited for its children (and reaped them) before it exited.
        assert not any(alive(child) for child in children), children
        log = parent.log_text()
        assert log.count("action=scheduler_process_stopped") == 2, log
        assert "action=scheduler_process_exited" not in log


async def test_a_child_that_dies_stops_the_service_with_exit_1(
    cluster: Cluster, reap: set[int]
) -> None:
    with trio.fail_after(90):
        parent = await cluster.start_scheduler("--processes", "3")
        children = await wait_serving(cluster, parent, 3, reap)
        victim, other = sorted(children)

        parent.stopped = True  # its exit is what this test waits for
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(20):
            code = await parent.process.wait()

        assert code == 1, parent.log_tail()
        assert not alive(other)
        log = parent.log_text()
        assert f"Error: scheduler process {victim} exited with signal SIGKILL" in log, log
        assert "action=scheduler_process_exited" in log


async def test_children_stop_when_the_parent_is_killed(
    cluster: Cluster, reap: set[int]
) -> None:
    """SIGKILL gives the parent no chance to stop its children: they notice (within about
    a second) and stop by themselves."""
    with trio.fail_after(90):
        parent = await cluster.start_scheduler("--processes", "3")
        children = await wait_serving(cluster, parent, 3, reap)

        await cluster.kill(parent)
        await wait_gone(cluster, children, "the children of a killed parent to exit")
        assert "action=scheduler_parent_gone" in parent.log_text()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--processes", "0"], {}, "'--processes'"),
        (["--processes", "65"], {}, "'--processes'"),
        (["--processes", "two"], {}, "'--processes'"),
        ([], {"TM_PROCESSES": "0"}, "TM_PROCESSES"),
    ],
)
async def test_processes_out_of_range_is_a_usage_error(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = await run_tm("scheduler", *args, "--database-url", "postgresql://unused.invalid/x",
                          env=env)
    assert result.returncode == 2, result
    message = result.stderr.decode()
    assert named in message and "Invalid value" in message, message
    assert "Traceback" not in message


def test_every_scheduler_option_reaches_the_children() -> None:
    """Children get the parent's options through `TM_<OPTION>` variables, one per option;
    an option without one would silently fall back to its default in the children."""
    command = tm_cli.commands["scheduler"]
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert isinstance(param.envvar, str) and param.envvar.startswith("TM_"), param.name
    option = next(p for p in command.params if p.name == "processes")
    assert isinstance(option, click.Option) and option.envvar == "TM_PROCESSES"
