"""The benchmark: ingest, drain and due→started latency on a cluster of real processes.

Phases with a cluster the bench starts itself (figures are printed as a table and written
as JSON with --json):

1. single-task ingest: POST /tasks, one task per request, 16 concurrent clients.
2. batch ingest: POST /tasks with 10,000 tasks per request.
3. drain: N due `echo` tasks inserted at once, time until all are completed, with 1, 3
   and 6 workers (each worker: concurrency 20, queue 500).
4. latency: 200 tasks/s, each scheduled 1 s ahead, for 20 s; due→started percentiles
   from the stored `scheduled_at` / `started_at`.
5. 3 and 4 again with 1,000,000 finished tasks in the table.
6. a due backlog of 1,000,000 tasks worked on by 3 workers for 15 s: tasks/s, and the
   peak RSS of every process while it lasts (is the coordinator's memory bounded by
   what it holds, not by what is due?).
7. peak RSS of every process over the whole run (VmHWM).

Tasks submitted in phases 1-2 are due far in the future and deleted afterwards, so they
do not disturb the drain; each phase deletes its tasks (the history rows excepted) before
the next one starts.

The cluster runs against a fresh database (created, then dropped) on the server of
--database-url, or on a private PostgreSQL started for the run (--embedded, tm/devdb.py);
its phases are tm/bench/local.py. With --url, a running cluster is measured over HTTP
instead: see tm/bench/remote.py. This module picks the mode, stops the run cleanly on
SIGTERM as on Ctrl-C, and prints (and writes) the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from tm.bench.api import BenchError, one_line
from tm.bench.local import run_local
from tm.bench.model import BenchPlan, BenchResult, as_json, new_result, render
from tm.exceptions import find_exception

__all__ = ["BenchError", "BenchPlan", "BenchResult", "main", "render", "run_local"]


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """A private PostgreSQL for one run (tm/devdb.py, as `tm dev` uses), thrown away after.

    Durable settings (fsync on), unlike `tm dev`'s: the figures should be those of a real
    server.
    """
    from tm.devdb import run_postgres

    root = Path(tempfile.mkdtemp(prefix="tm-bench-pg-"))
    try:
        with run_postgres(root, fast=False) as url:
            yield url
    finally:
        location = root / "pgdata-location"  # where devdb put it, if not under root
        if location.exists():
            shutil.rmtree(location.read_text().strip(), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the bench the way Ctrl-C does: its processes stopped, its database
    dropped, its private PostgreSQL stopped. (Python's default would die on the spot and
    leave all of them running.) Not when SIGINT is ignored (a background job)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_mode(plan: BenchPlan, result: BenchResult, *, database_url: str | None,
              default_url: bool, embedded: bool, url: str | None, token: str | None) -> None:
    try:
        if url is not None:
            from tm.bench.remote import run_remote

            trio.run(run_remote, url, token, plan, result)
        elif embedded:
            from tm.devdb import DevDatabaseError

            with contextlib.ExitStack() as stack:
                try:
                    pg_url = stack.enter_context(embedded_postgres())
                except DevDatabaseError as exc:
                    raise BenchError(
                        one_line(f"cannot start a private PostgreSQL: {exc}")
                    ) from None
                result.mode = "embedded"
                trio.run(run_local, pg_url, plan, result)
        else:
            assert database_url is not None
            trio.run(lambda: run_local(database_url, plan, result, default_url=default_url))
    except BaseExceptionGroup as group:
        # Errors come out of trio's nurseries wrapped in groups: show the one that says
        # why (a BenchError), or stop as Ctrl-C stops a command (click: "Aborted!").
        error = find_exception(group, BenchError)
        if error is not None:
            raise error from None
        if find_exception(group, KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


def main(
    *,
    quick: bool,
    json_path: Path | None,
    database_url: str | None = None,
    default_url: bool = False,
    embedded: bool = False,
    url: str | None = None,
    token: str | None = None,
) -> BenchResult:
    """Run the bench in one of its three modes: `url` (a running cluster), `embedded` (own
    cluster on a private PostgreSQL) or own cluster on `database_url`'s server. Raises
    BenchError (one line) when it cannot run."""
    plan = BenchPlan.quick() if quick else BenchPlan()
    start = time.monotonic()
    result = new_result(plan)
    with _sigterm_as_ctrl_c():
        _run_mode(plan, result, database_url=database_url, default_url=default_url,
                  embedded=embedded, url=url, token=token)
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(result), indent=2) + "\n")
    print(render(result))
    print(f"\n(took {time.monotonic() - start:.0f} s)")
    return result
