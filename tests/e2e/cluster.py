"""A harness for end-to-end tests: real `tm` processes on loopback, driven over HTTP.

Rules it keeps (STYLE.md item 10):
* Loopback only. The scheduler and coordinator get a free port picked by binding port 0;
  workers listen on `127.0.0.1:0` themselves.
* Every wait polls a public endpoint (or the process) with a short sleep inside a
  `trio.fail_after` deadline, so nothing can hang and nothing waits on a bare sleep.
* Each process writes stdout+stderr to `<tmp_path>/<name>.log`; when the cluster closes,
  every process still running is SIGKILLed and reaped, and the log tails are printed, so a
  failing test shows what the services said (pytest prints captured output on failure).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import asyncpg
import httpx
import trio
import trio_asyncio

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 20.0  # generous: two shared CPUs, each process imports grpclib, asyncpg, quart
POLL_S = 0.05
LOG_TAIL_LINES = 80

Task = dict[str, Any]
T = TypeVar("T")
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def tm_command() -> list[str]:
    """The installed `tm` console script next to this interpreter, else `python -m tm`."""
    script = Path(sys.executable).with_name("tm")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tm"]


def free_port() -> int:
    """A free port for a server we start, chosen below the kernel's ephemeral range.

    A port 0 bind hands out ephemeral ports, the very pool that workers binding port 0 and
    every outgoing connection draw from, so between our check and the server's own bind
    another process could take it. Ports under the range are only taken by explicit binds.
    """
    low, _high = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(20_000, min(low, 32_768))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def parse_time(value: str) -> datetime:
    """An RFC 3339 time of the API; it must carry an offset."""
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"time without offset: {value!r}"
    return parsed


def is_finished(task: Task) -> bool:
    return task["status"] in TERMINAL


_TASK_ID = re.compile(r"\btask_id=([0-9a-f-]{36})\b")


def logged_task_ids(procs: Iterable[Proc], action: str) -> Counter[str]:
    """How many `action=<action>` log lines each task_id has, over all of `procs`' logs.

    Reads the console log format (`... action=task_finished ... task_id=<uuid> ...`).
    """
    marker = f"action={action} "
    counts: Counter[str] = Counter()
    for proc in procs:
        for line in proc.log_text().splitlines():
            if marker in line + " ":
                found = _TASK_ID.search(line)
                if found:
                    counts[found.group(1)] += 1
    return counts


def pids_with_cmdline(fragment: str) -> list[int]:
    """Live processes (not zombies) whose command line contains `fragment`, from /proc."""
    needle = fragment.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in cmdline.replace(b"\0", b" "):
            pids.append(int(entry.name))
    return pids


async def query_database(url: str, query: str, *args: Any) -> list[Any]:
    """Run one statement on its own connection (asyncpg inside trio-asyncio); its rows."""

    async def on_asyncio() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async with trio_asyncio.open_loop():
        rows: list[Any] = await trio_asyncio.aio_as_trio(on_asyncio)()
    return rows


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment minus any TM_* settings of the caller's shell, so only our flags count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _open_log(path: Path) -> BinaryIO:
    return path.open("ab")


@dataclass(eq=False)
class Proc:
    name: str
    args: list[str]
    process: trio.Process
    log_path: Path
    address: str | None = None
    worker_id: str | None = None
    stopped: bool = False  # we signalled it: its exit is expected, not a failure

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self.process.pid} {state}>"

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class ProcessExited(AssertionError):
    def __init__(self, proc: Proc, waiting_for: str) -> None:
        super().__init__(
            f"{proc.name} exited with {proc.returncode} while waiting for {waiting_for}; "
            f"its log:\n{proc.log_tail()}"
        )


@dataclass(eq=False)
class Cluster:
    """Processes of one test against one database. Use `open_cluster`."""

    database_url: str
    log_dir: Path
    client: httpx.AsyncClient
    procs: list[Proc] = field(default_factory=list)
    http_url: str | None = None
    grpc_addr: str | None = None
    scheduler: Proc | None = None
    coordinator: Proc | None = None
    _worker_count: int = 0

    def __repr__(self) -> str:
        return f"<Cluster http={self.http_url} grpc={self.grpc_addr} procs={self.procs}>"

    # ------------------------------------------------------------------ processes

    async def spawn(self, name: str, args: list[str], **fields: Any) -> Proc:
        """Start `tm <args>` with its output going to `<log_dir>/<name>.log`."""
        path = self.log_dir / f"{name}.log"
        command = [*tm_command(), *args]
        log = _open_log(path)
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(REPO),
                env=_clean_env(),
            )
        finally:
            log.close()  # the child holds its own copy
        proc = Proc(name, command, process, path, **fields)
        self.procs.append(proc)
        return proc

    async def start_scheduler(self, *extra: str, wait: bool = True) -> Proc:
        """`tm scheduler` on a free port; returns once GET /healthz answers 200 (if `wait`)."""
        address = f"127.0.0.1:{free_port()}"
        proc = await self.spawn(
            "scheduler",
            ["scheduler", "--http-addr", address, "--database-url", self.database_url, *extra],
            address=address,
        )
        self.scheduler = proc
        self.http_url = f"http://{address}"
        if wait:
            await self.wait_http_ready(proc)
        return proc

    async def start_coordinator(
        self,
        *,
        heartbeat_timeout: float = 2.0,
        heartbeat_interval: float = 0.3,
        lease: float | None = None,
        wait: bool = True,
        address: str | None = None,
        name: str = "coordinator",
        extra: Sequence[str] = (),
    ) -> Proc:
        """`tm coordinator` on a free port; returns once it accepts TCP connections (if `wait`).

        `address` reuses a given one (a restart on the same port, so workers reconnect);
        `name` names its log (a second coordinator, a restart). The latest one started is
        `self.coordinator` and the workers' default `--coordinator`.
        """
        address = address or f"127.0.0.1:{free_port()}"
        args = [
            "coordinator",
            "--grpc-addr",
            address,
            "--database-url",
            self.database_url,
            "--heartbeat-timeout",
            str(heartbeat_timeout),
            "--heartbeat-interval",
            str(heartbeat_interval),
        ]
        if lease is not None:
            args += ["--lease", str(lease)]
        args += list(extra)
        proc = await self.spawn(name, args, address=address)
        self.coordinator = proc
        self.grpc_addr = address
        if wait:
            await self.wait_listening(proc)
        return proc

    async def start_servers(
        self, *, workers: int = 0, executor: str = "echo", **coordinator_options: Any
    ) -> list[Proc]:
        """Scheduler, coordinator and `workers` workers, all starting side by side.

        Returns once the API answers, the coordinator listens and GET /workers lists exactly
        the new workers. (Workers that come up before the coordinator retry with backoff.)
        """
        scheduler = await self.start_scheduler(wait=False)
        coordinator = await self.start_coordinator(wait=False, **coordinator_options)
        started = [await self.start_worker(executor=executor) for _ in range(workers)]
        await self.wait_http_ready(scheduler)
        await self.wait_listening(coordinator)
        await self.wait_for_workers(started)
        return started

    async def start_worker(
        self,
        *,
        executor: str = "echo",
        concurrency: int = 5,
        worker_id: str | None = None,
        drain_grace: float | None = None,
        coordinator: str | None = None,
        queue_size: int | None = None,
        extra: Sequence[str] = (),
    ) -> Proc:
        """`tm worker` against the coordinator (or `coordinator`); does not wait for it."""
        coordinator = coordinator or self.grpc_addr
        assert coordinator is not None, "start the coordinator first"
        self._worker_count += 1
        worker_id = worker_id or f"e2e-w{self._worker_count}"
        args = [
            "worker",
            "--coordinator",
            coordinator,
            "--grpc-addr",
            "127.0.0.1:0",
            "--worker-id",
            worker_id,
            "--executor",
            executor,
            "--concurrency",
            str(concurrency),
        ]
        if drain_grace is not None:
            args += ["--drain-grace", str(drain_grace)]
        if queue_size is not None:
            args += ["--queue-size", str(queue_size)]
        args += list(extra)
        return await self.spawn(f"worker-{worker_id}", args, worker_id=worker_id)

    async def start_workers(self, count: int, **options: Any) -> list[Proc]:
        """`count` workers; returns once GET /workers lists exactly them."""
        workers = [await self.start_worker(**options) for _ in range(count)]
        await self.wait_for_workers(workers)
        return workers

    async def wait_for_workers(self, workers: list[Proc]) -> None:
        """Wait until GET /workers lists exactly `workers`."""
        listed = await self.wait_workers(len(workers))
        assert {w["worker_id"] for w in listed} == {p.worker_id for p in workers}, listed

    async def start_dev(self, *, workers: int = 2, data_dir: Path | None = None) -> Proc:
        """`tm dev` as one process; returns once its HTTP API answers.

        With `data_dir`, no database URL is given: `tm dev` runs its private PostgreSQL there.
        """
        http = f"127.0.0.1:{free_port()}"
        grpc = f"127.0.0.1:{free_port()}"
        database = (["--data-dir", str(data_dir)] if data_dir is not None
                    else ["--database-url", self.database_url])
        proc = await self.spawn(
            "dev",
            [
                "dev",
                "--workers",
                str(workers),
                "--http-addr",
                http,
                "--grpc-addr",
                grpc,
                *database,
            ],
            address=http,
        )
        self.http_url = f"http://{http}"
        self.grpc_addr = grpc
        await self.wait_http_ready(proc)
        return proc

    async def stop(self, proc: Proc, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> int:
        """Send `sig` and wait (at most `timeout` s) for the process to exit; its exit code."""
        proc.stopped = True
        proc.process.send_signal(sig)
        try:
            with trio.fail_after(timeout):
                return await proc.process.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"{proc.name} did not exit within {timeout} s of "
                f"{signal.Signals(sig).name}; its log:\n{proc.log_tail()}"
            ) from None

    async def kill(self, proc: Proc) -> int:
        """SIGKILL: the process gets no chance to say goodbye."""
        return await self.stop(proc, signal.SIGKILL, timeout=10.0)

    async def run_cli(
        self, *args: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a short `tm` client command to completion; output captured, exit not checked."""
        with trio.fail_after(timeout):
            return await trio.run_process(
                [*tm_command(), *args],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=str(REPO),
                env=_clean_env(),
            )

    async def run_clis(self, *commands: list[str]) -> list[subprocess.CompletedProcess[bytes]]:
        """`run_cli` for several commands at once (each pays a process start-up)."""
        results: dict[int, subprocess.CompletedProcess[bytes]] = {}

        async def one(index: int, args: list[str]) -> None:
            results[index] = await self.run_cli(*args)

        async with trio.open_nursery() as nursery:
            for index, args in enumerate(commands):
                nursery.start_soon(one, index, args)
        return [results[i] for i in range(len(commands))]

    async def aclose(self) -> None:
        """SIGKILL and reap whatever is still running, then print every log tail."""
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            for proc in self.procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.process.kill()
            for proc in self.procs:
                await proc.process.wait()
        for proc in self.procs:
            print(f"===== {proc!r} log ({proc.log_path}) =====")
            print(proc.log_tail())

    # ------------------------------------------------------------------ waits

    def _check_alive(self, procs: Iterable[Proc | None], waiting_for: str) -> None:
        for proc in procs:
            if proc is not None and not proc.stopped and proc.returncode is not None:
                raise ProcessExited(proc, waiting_for)

    async def wait_http_ready(self, proc: Proc, *, timeout: float = STARTUP_S) -> None:
        """Poll GET /healthz until it answers 200."""
        with trio.fail_after(timeout):
            while True:
                self._check_alive([proc], "GET /healthz")
                with contextlib.suppress(httpx.TransportError):
                    response = await self.client.get(f"http://{proc.address}/healthz")
                    if response.status_code == 200:
                        return
                await trio.sleep(POLL_S)

    async def wait_listening(self, proc: Proc, *, timeout: float = STARTUP_S) -> None:
        """Poll until the process's address accepts a TCP connection."""
        assert proc.address is not None
        host, port = proc.address.rsplit(":", 1)
        with trio.fail_after(timeout):
            while True:
                self._check_alive([proc], f"{proc.address} to listen")
                try:
                    stream = await trio.open_tcp_stream(host, int(port))
                except OSError:
                    await trio.sleep(POLL_S)
                    continue
                await stream.aclose()
                return

    async def wait_workers(self, count: int, *, timeout: float = STARTUP_S) -> list[dict[str, Any]]:
        """Poll GET /workers until it lists exactly `count` workers; returns them."""
        with trio.fail_after(timeout):
            while True:
                self._check_alive(self.procs, f"{count} workers")
                workers = (await self.get("/workers"))["workers"]
                if len(workers) == count:
                    return list(workers)
                await trio.sleep(POLL_S)

    async def wait_task(
        self,
        task_id: str,
        predicate: Callable[[Task], bool] = is_finished,
        *,
        timeout: float = 15.0,
    ) -> Task:
        """Poll GET /tasks/<id> until `predicate(task)`; returns the task."""
        with trio.fail_after(timeout):
            while True:
                self._check_alive(self.procs, f"task {task_id}")
                task: Task = await self.get(f"/tasks/{task_id}")
                if predicate(task):
                    return task
                await trio.sleep(POLL_S)

    async def wait_tasks(
        self,
        task_ids: Iterable[str],
        predicate: Callable[[Task], bool] = is_finished,
        *,
        timeout: float = 15.0,
    ) -> list[Task]:
        """`wait_task` for each id, all under one deadline; returns them in order."""
        with trio.fail_after(timeout):
            return [await self.wait_task(t, predicate, timeout=timeout) for t in task_ids]

    async def wait_until(
        self,
        check: Callable[[], Awaitable[T | None]],
        waiting_for: str,
        *,
        timeout: float = 15.0,
        poll: float = POLL_S,
    ) -> T:
        """Poll `check()` until it returns something other than None/False; returns that.

        Fails (with `waiting_for` and the last value seen) after `timeout` seconds, or at
        once if a process we did not stop has exited.
        """
        last: object = None
        try:
            with trio.fail_after(timeout):
                while True:
                    self._check_alive(self.procs, waiting_for)
                    last = await check()
                    if last is not None and last is not False:
                        return last
                    await trio.sleep(poll)
        except trio.TooSlowError:
            raise AssertionError(
                f"still waiting for {waiting_for} after {timeout} s (last seen: {last!r})"
            ) from None

    # ------------------------------------------------------------------ HTTP

    def url(self, path: str) -> str:
        assert self.http_url is not None, "start the scheduler first"
        return self.http_url + path

    async def get(self, path: str) -> Any:
        response = await self.client.get(self.url(path))
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    async def post(self, path: str, body: Any, *, expect: int = 201) -> Any:
        response = await self.client.post(self.url(path), json=body)
        assert response.status_code == expect, (path, response.status_code, response.text)
        return response.json()

    async def submit_many(self, tasks: list[dict[str, Any]]) -> list[Task]:
        """POST /tasks as one batch; returns the created tasks in order."""
        created: list[Task] = (await self.post("/tasks", {"tasks": tasks}))["tasks"]
        assert len(created) == len(tasks)
        return created


@contextlib.asynccontextmanager
async def open_cluster(database_url: str, log_dir: Path) -> AsyncIterator[Cluster]:
    """A cluster whose processes are all killed and reaped on exit, however it is left."""
    await trio.Path(log_dir).mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(timeout=10.0) as client:
        cluster = Cluster(database_url, log_dir, client)
        try:
            yield cluster
        finally:
            await cluster.aclose()
