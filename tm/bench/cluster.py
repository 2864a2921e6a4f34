"""Real `tm` processes for the benchmark, on loopback, each in its own process (own GIL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_mb(pid: int, key: str) -> float | None:
    """A `/proc/<pid>/status` memory figure of a live process, in MB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MB."""
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float | None:
    """VmRSS (resident set now) of a live process, in MB."""
    return _status_mb(pid, "VmRSS:")


def listening_sockets(port: int) -> int:
    """IPv4 TCP sockets listening on `port` (one per scheduler process), from /proc/net/tcp."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 1 << 30  # not Linux: cannot tell, do not wait
    count = 0
    for line in lines:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


@dataclass(eq=False)
class BenchProcess:
    role: str
    process: trio.Process
    peak_mb: float = 0.0

    def sample(self) -> None:
        """The largest peak RSS of the process and its children (a multi-process scheduler)."""
        for pid in (self.process.pid, *_children(self.process.pid)):
            value = peak_rss_mb(pid)
            if value is not None:
                self.peak_mb = max(self.peak_mb, value)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass(eq=False)
class BenchCluster:
    database_url: str
    log_dir: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    processes: list[BenchProcess] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "tm"]

    async def _start(self, role: str, *args: str) -> BenchProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
        env.update(TM_DATABASE_URL=self.database_url, TM_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
        log = (self.log_dir / f"{role}-{len(self.processes)}.log").open("ab")
        process = await trio.lowlevel.open_process(
            [*self._command(), role, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        proc = BenchProcess(role, process)
        self.processes.append(proc)
        return proc

    async def start_servers(self, scheduler_processes: int = 1) -> None:
        await self._start("scheduler", "--http-addr", f"127.0.0.1:{self.http_port}",
                          "--processes", str(scheduler_processes))
        await self._start("coordinator", "--grpc-addr", f"127.0.0.1:{self.grpc_port}")
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            with trio.fail_after(60):
                while True:
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.1)
                # Connections are kept open for a whole phase: every scheduler process must
                # listen before the first one is made, or the latecomers get none.
                while listening_sockets(self.http_port) < scheduler_processes:
                    await trio.sleep(0.1)

    async def start_workers(self, count: int) -> list[BenchProcess]:
        workers = [
            await self._start(
                "worker",
                "--coordinator",
                f"127.0.0.1:{self.grpc_port}",
                "--executor",
                "echo",
                "--concurrency",
                "20",
                "--queue-size",
                "500",
            )
            for _ in range(count)
        ]
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            with trio.fail_after(60):
                while len((await client.get("/workers")).json()["workers"]) < count:
                    await trio.sleep(0.1)
        return workers

    def sample(self) -> None:
        for proc in self.processes:
            if proc.process.returncode is None:
                proc.sample()
                self.peaks[proc.role] = max(self.peaks.get(proc.role, 0.0), proc.peak_mb)

    async def stop(self, procs: list[BenchProcess]) -> None:
        self.sample()
        for proc in procs:
            if proc.process.returncode is None:
                proc.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            for proc in procs:
                await proc.process.wait()
        for proc in procs:
            if proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()
        for proc in procs:
            if proc in self.processes:
                self.processes.remove(proc)

    async def wait_workers_gone(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            with trio.move_on_after(20):
                while (await client.get("/workers")).json()["workers"]:
                    await trio.sleep(0.2)

    async def close(self) -> None:
        await self.stop(list(self.processes))
