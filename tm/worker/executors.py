"""Executors: what running a task's command means.

* `echo` treats the command as data: the output is the command, exit code 0, at once.
* `shell` runs `/bin/sh -c <command>` in its own process group and keeps the last 64 KiB
  of stdout+stderr. Cancelling the execution (task cancel, timeout, shutdown) sends
  SIGTERM to the whole group, then SIGKILL after `kill_after` seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Result:
    exit_code: int
    output: str


Executor = Callable[[str], Awaitable[Result]]


async def run_echo(command: str) -> Result:
    await trio.lowlevel.checkpoint()
    return Result(0, command[-OUTPUT_LIMIT:])


def _tail(data: bytes) -> str:
    return data[-OUTPUT_LIMIT:].decode("utf-8", "replace").replace("\x00", "")


def _signal_group(process: trio.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def _terminate_then_kill(process: trio.Process, kill_after: float) -> None:
    _signal_group(process, signal.SIGTERM)
    with trio.move_on_after(kill_after):
        await process.wait()
        return
    _signal_group(process, signal.SIGKILL)


async def run_shell(command: str, *, kill_after: float = 5.0) -> Result:
    """Run through /bin/sh; cancellation terminates the process group (see module doc)."""
    tail = bytearray()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
                start_new_session=True,
                deliver_cancel=partial(_terminate_then_kill, kill_after=kill_after),
            )
        )
        assert process.stdout is not None
        async for chunk in process.stdout:
            tail += chunk
            if len(tail) > 2 * OUTPUT_LIMIT:
                del tail[:-OUTPUT_LIMIT]
    returncode = process.returncode if process.returncode is not None else -1
    return Result(returncode, _tail(bytes(tail)))


EXECUTORS: dict[str, Executor] = {"echo": run_echo, "shell": run_shell}
