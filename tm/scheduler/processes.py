"""`tm scheduler --processes N`: N processes serving one address.

One scheduler process is CPU-bound in the HTTP stack (trio, h11, hypercorn, quart) at about
1,300 single-task requests/s on two cores. The scheduler keeps no state of its own: every
process has its own database pool and its own group commit, so several processes can serve
the same address side by side.

* The parent serves as one of the N. It binds first, with SO_REUSEPORT, so that
  `--http-addr host:0` resolves to a port; then it starts N-1 children, `python -m tm
  scheduler` with its own options in their environment (`TM_*`), `TM_HTTP_ADDR` the bound
  address, `TM_PROCESSES=1`, and `_TM_SCHEDULER_PARENT=<its pid>`, which tells a child to
  bind with SO_REUSEPORT too and to watch its parent. The kernel (Linux) spreads new
  connections over the N listening sockets by a hash of the connection's addresses and
  ports; a keep-alive connection stays with the process that accepted it.
* Migrations: the parent applies them before it binds, so before any child starts; each
  child runs the same check (under the advisory lock), finds nothing pending and goes on.
* SIGTERM/SIGINT to the parent: it stops accepting, finishes its in-flight requests and
  sends SIGTERM to every child, which does the same; it exits 0 once all have. The children
  run in their own process group, so Ctrl-C on a terminal reaches the parent only and each
  child gets one signal (a second one would mean "stop at once").
* A child that exits while the service is not stopping (crash, OOM killer, `kill -9`): the
  parent logs it (`action=scheduler_process_exited`), stops the whole service — the other
  processes gracefully — and exits 1. It does not restart the child itself: a scheduler at
  part of its capacity still passes its health checks, so the failure would go unseen,
  while the service manager that already runs `tm scheduler` (systemd, compose `restart:`,
  Kubernetes) restarts it with its own backoff and reports it; nothing is lost by the
  restart, the scheduler holds no state.
* A parent that dies without stopping its children (SIGKILL, OOM killer): every child
  checks once a second that its parent is still the process that started it, and
  otherwise stops as on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import replace
from functools import partial

import structlog
import trio

from tm.scheduler.service import serve_scheduler
from tm.settings import SchedulerSettings

log = structlog.get_logger(__name__)

# Set by the parent in each child's environment: the parent's pid. Internal, not an option.
PARENT_ENV = "_TM_SCHEDULER_PARENT"
PARENT_POLL_S = 1.0
KILL_WAIT_S = 5.0


class SchedulerProcessFailed(Exception):
    """A process of a multi-process scheduler exited on its own; the service stopped."""


async def serve_processes(
    settings: SchedulerSettings,
    *,
    child_env: Mapping[str, str | None],
    grace: float,
    stop: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API with `settings.processes` processes; reports the bound address.

    `child_env` holds the `TM_*` variables that give a child this process's options (None:
    unset it). Raises `SchedulerProcessFailed` after stopping if a child exited on its own.
    In a child (`_TM_SCHEDULER_PARENT` set), serves as one of its parent's processes.
    Must run inside `trio_asyncio.open_loop()`.
    """
    parent = os.environ.get(PARENT_ENV)
    if parent or settings.processes > 1:
        # Each process's log lines say which process wrote them.
        structlog.contextvars.bind_contextvars(pid=os.getpid())
    if parent:
        await _serve_child(settings, int(parent), grace=grace, stop=stop, task_status=task_status)
    elif settings.processes > 1:
        await _serve_parent(settings, child_env, stop=stop, task_status=task_status)
    else:
        await serve_scheduler(settings, stop=stop, task_status=task_status)


async def _serve_parent(
    settings: SchedulerSettings,
    child_env: Mapping[str, str | None],
    *,
    stop: trio.Event,
    task_status: trio.TaskStatus[str],
) -> None:
    settings = replace(settings, reuse_port=True)
    failures: list[str] = []
    children: list[trio.Process] = []
    async with trio.open_nursery() as nursery:
        address: str = await nursery.start(partial(serve_scheduler, settings, stop=stop))
        env = child_environment(child_env, address)
        for _ in range(settings.processes - 1):
            if stop.is_set():
                break
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tm", "scheduler"],
                env=env,
                stdin=subprocess.DEVNULL,
                process_group=0,  # a terminal's Ctrl-C reaches the parent only
            )
            children.append(process)
            log.info("scheduler process started", action="scheduler_process_started",
                     child_pid=process.pid)
            nursery.start_soon(_supervise, process, stop, failures)
        log.info("scheduler serving", action="scheduler_started", address=address,
                 processes=settings.processes)
        task_status.started(address)
        await stop.wait()
        for process in children:
            if process.returncode is None:
                with suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
    if failures:
        raise SchedulerProcessFailed("; ".join(failures))


def child_environment(child_env: Mapping[str, str | None], address: str) -> dict[str, str]:
    """A child's environment: ours, with the options' variables, as one process on `address`."""
    env = dict(os.environ)
    for name, value in child_env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env.update({"TM_HTTP_ADDR": address, "TM_PROCESSES": "1", PARENT_ENV: str(os.getpid())})
    return env


async def _supervise(process: trio.Process, stop: trio.Event, failures: list[str]) -> None:
    """Wait for a child; if it exits on its own, record why and stop the service."""
    try:
        code = await process.wait()
    finally:
        if process.returncode is None:  # cancelled: the service stops at once
            with suppress(ProcessLookupError):
                process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(KILL_WAIT_S):
                await process.wait()
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
    if stop.is_set() and code in (0, -signal.SIGTERM):
        log.info("scheduler process stopped", action="scheduler_process_stopped",
                 child_pid=process.pid, exit=how)
        return
    failure = f"scheduler process {process.pid} exited with {how}"
    failures.append(failure)
    log.error(failure + "; stopping the service", action="scheduler_process_exited",
              child_pid=process.pid, exit=how)
    stop.set()


async def _serve_child(
    settings: SchedulerSettings,
    parent: int,
    *,
    grace: float,
    stop: trio.Event,
    task_status: trio.TaskStatus[str],
) -> None:
    settings = replace(settings, processes=1, reuse_port=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_parent, parent, stop, nursery.cancel_scope, grace)
        await serve_scheduler(settings, stop=stop, task_status=task_status)
        nursery.cancel_scope.cancel()


async def _watch_parent(
    parent: int, stop: trio.Event, scope: trio.CancelScope, grace: float
) -> None:
    """Stop (gracefully, within `grace` s) once `parent` is no longer our parent process."""
    while True:
        if os.getppid() != parent:  # we were re-parented: ours is gone
            break
        await trio.sleep(PARENT_POLL_S)
    log.warning("parent process gone: stopping", action="scheduler_parent_gone", parent=parent)
    stop.set()
    scope.deadline = min(scope.deadline, trio.current_time() + grace)
