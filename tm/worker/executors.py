"""Executors: what running a task's command means.

* `echo` treats the command as data: the output is the command, exit code 0, at once.
* `shell` runs `/bin/sh -c <command>` in its own process group and keeps the last 64 KiB
  of stdout+stderr. Cancelling the execution (task cancel, timeout, shutdown) sends
  SIGTERM to the whole group, then SIGKILL after `kill_after` seconds. A worker running
  as root can run the commands as another user (`--run-as`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

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


@dataclass(frozen=True, slots=True)
class RunAs:
    """A user to run shell commands as (the worker must be root to switch)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """The user `name`; ValueError if unknown or if this process cannot switch to it."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"no such user: {name!r}") from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise ValueError("running commands as another user needs the worker to run as root")
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def popen_options(self) -> dict[str, Any]:
        env = dict(os.environ, HOME=self.home, USER=self.name, LOGNAME=self.name)
        cwd = self.home if os.path.isdir(self.home) else "/"
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "env": env, "cwd": cwd}


async def run_shell(
    command: str, *, kill_after: float = 5.0, run_as: RunAs | None = None
) -> Result:
    """Run through /bin/sh; cancellation terminates the process group (see module doc)."""
    tail = bytearray()
    options = run_as.popen_options() if run_as else {}
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
                **options,
            )
        )
        assert process.stdout is not None
        async for chunk in process.stdout:
            tail += chunk
            if len(tail) > 2 * OUTPUT_LIMIT:
                del tail[:-OUTPUT_LIMIT]
    returncode = process.returncode if process.returncode is not None else -1
    return Result(returncode, _tail(bytes(tail)))


EXECUTORS = ("echo", "shell")


def make_executor(name: str, run_as: str | None = None) -> Executor:
    """The executor called `name`; ValueError for an unknown one or an unusable user."""
    if name == "echo":
        return run_echo
    if name == "shell":
        return partial(run_shell, run_as=RunAs.lookup(run_as) if run_as else None)
    raise ValueError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
