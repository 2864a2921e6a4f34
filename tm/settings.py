"""Settings of each service: frozen dataclasses, the one home of every server option.

A field that is a command-line option says so in its metadata (`setting(...)`): its flag,
its help, and the values it takes (a range, choices, an address). Its environment variable
is `TM_` plus the flag (`--heartbeat-timeout` -> `TM_HEARTBEAT_TIMEOUT`). tm/options.py
makes the click options of `tm scheduler | coordinator | worker | dev` from this, so each
default, help text and variable is written once, here.

`__post_init__` checks every value and the rules between values (a lease longer than the
heartbeat timeout, ...) and raises SettingsError naming the options: the CLI, `tm dev` and
the tests cannot build settings that `tm coordinator` would refuse. It is plain data (no
click, no I/O), so anything may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from tm.core.addresses import split_address
from tm.tls import TlsFiles

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/taskmaster"
MAX_SCHEDULER_PROCESSES = 64


class SettingsError(ValueError):
    """Settings that cannot work together; the message names the options."""


@dataclass(frozen=True, slots=True)
class Option:
    """How a settings field appears on the command line (see tm/options.py)."""

    flag: str
    help: str
    # More flags and variables that mean the same (older or contract spellings).
    aliases: tuple[str, ...] = ()
    more_envvars: tuple[str, ...] = ()
    # Numbers: the range accepted (bounds included unless `min_open`).
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    choices: tuple[str, ...] = ()
    # host:port (tm.core.addresses.split_address).
    address: bool = False
    # Shown as the default instead of the value, e.g. "not served" for None.
    default_text: str | None = None

    @property
    def envvar(self) -> str:
        return "TM_" + self.flag.removeprefix("--").replace("-", "_").upper()

    def check(self, value: Any) -> None:
        """SettingsError if `value` is not one this option takes (None always is)."""
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise SettingsError(f"{self.flag} must be one of {', '.join(self.choices)}; "
                                f"got {value!r}")
        if self.address:
            try:
                split_address(value)
            except ValueError as exc:
                raise SettingsError(f"{self.flag}: {exc}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            low = -math.inf if self.min is None else self.min
            high = math.inf if self.max is None else self.max
            if not (low < value if self.min_open else low <= value) or not value <= high \
                    or math.isnan(value):
                raise SettingsError(f"{self.flag} must be in {self.range_text()}; got {value}")

    def range_text(self) -> str:
        low = "" if self.min is None else f"{self.min:g}{'<' if self.min_open else '<='}"
        high = "" if self.max is None else f"<={self.max:g}"
        return f"{low}x{high}"


def setting(default: Any, flag: str, help: str, **option: Any) -> Any:
    """A settings field with `default` that is the command-line option `flag`."""
    return field(default=default, metadata={"option": Option(flag, help, **option)})


def option_of(cls: type, name: str) -> Option:
    """The Option of field `name` of settings class `cls`."""
    for f in fields(cls):
        if f.name == name:
            option = f.metadata.get("option")
            if option is None:
                raise KeyError(f"{cls.__name__}.{name} is not an option")
            assert isinstance(option, Option)
            return option
    raise KeyError(f"{cls.__name__} has no field {name}")


def _check_fields(settings: Any) -> None:
    for f in fields(settings):
        option = f.metadata.get("option")
        if option is not None:
            option.check(getattr(settings, f.name))


# ---------------------------------------------------------------------------- shared

def _database_url() -> Any:
    return setting(DEFAULT_DATABASE_URL, "--database-url", "PostgreSQL URL.")


def _pool_size(who: str) -> Any:
    return setting(10, "--pool-size", f"Database connections {who} keeps open at most.",
                   min=1, max=1000)


def _metrics_addr() -> Any:
    return setting(None, "--metrics-addr", "Serve Prometheus metrics at http://ADDR/metrics.",
                   address=True, default_text="not served")


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    database_url: str = _database_url()
    http_addr: str = setting("127.0.0.1:8081", "--http-addr", "Address the HTTP API listens on.",
                             address=True)
    # Empty means none (an empty variable must not make "Bearer " a valid token).
    api_token: str | None = setting(
        None, "--api-token",
        "Require 'Authorization: Bearer <token>' (health endpoints stay open).",
        default_text="none: the API is open")
    worker_timeout_s: float = setting(
        5.0, "--worker-timeout", "GET /workers hides workers silent for longer (seconds).",
        min=0.1)
    pool_size: int = _pool_size("each scheduler process")
    processes: int = setting(
        1, "--processes",
        "Processes serving --http-addr together (Linux SO_REUSEPORT). One process tops out "
        "at about 1,300 requests/s on two cores; the scheduler is stateless, so processes "
        "(or replicas) scale it. If one dies, all stop and the exit status is 1.",
        min=1, max=MAX_SCHEDULER_PROCESSES)
    # Bind with SO_REUSEPORT, so other processes can listen on the same address and the
    # kernel spreads connections over them. Set for every process of a multi-process
    # scheduler (tm/scheduler/processes.py); off otherwise, so a second scheduler on a
    # taken port fails as before. Not an option.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.api_token == "":
            object.__setattr__(self, "api_token", None)
        _check_fields(self)


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    database_url: str = _database_url()
    grpc_addr: str = setting("127.0.0.1:8080", "--grpc-addr", "Address workers connect to.",
                             address=True)
    # A worker silent for this long is lost: it gets no new tasks, its connection is
    # dropped, and the tasks it holds wait for their lease.
    heartbeat_timeout_s: float = setting(
        5.0, "--heartbeat-timeout",
        "A worker silent this long (seconds) is lost; its tasks move on.", min=0.1)
    heartbeat_interval_s: float = setting(
        1.0, "--heartbeat-interval", "How often workers are told to heartbeat (seconds).",
        min=0.01)
    # A held task whose lease (renewed by heartbeats) expires is recovered even if its
    # coordinator is gone. Must be well above heartbeat_timeout_s.
    lease_s: float = setting(
        30.0, "--lease", "Task lease (seconds), renewed by heartbeats; expiry frees the task.",
        aliases=("--lease-s",), more_envvars=("TM_LEASE_S",), min=1)
    scan_interval_s: float = setting(
        1.0, "--scan-interval",
        "Seconds between backstop scans for due tasks, in case a NOTIFY was missed.",
        min=0.01, max=3600)
    max_claim: int = setting(
        1000, "--max-claim", "Most tasks one claim statement takes.", min=1, max=100_000)
    push_timeout_s: float = setting(
        5.0, "--push-timeout",
        "Seconds a push to a worker may take; then the tasks go to another worker.", min=0.1)
    retry_base_s: float = setting(
        1.0, "--retry-base",
        "Delay before retrying a failed execution (seconds); doubles with each attempt, "
        "with jitter.", min=0, min_open=True)
    retry_cap_s: float = setting(
        300.0, "--retry-cap", "Longest delay between retries of a failed execution (seconds).",
        min=0, min_open=True)
    pool_size: int = _pool_size("the coordinator")
    metrics_addr: str | None = _metrics_addr()
    tls: TlsFiles | None = None
    # A recurring schedule's occurrence at most this old is on time; older ones were
    # missed while no coordinator ran, and the schedule's catch_up decides about them.
    schedule_grace_s: float = setting(
        5.0, "--schedule-grace",
        "A recurring schedule's occurrence up to this old (seconds) still runs; older ones "
        "were missed while no coordinator ran, and the schedule's catch_up decides.", min=0.5)

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.heartbeat_interval_s >= self.heartbeat_timeout_s:
            raise SettingsError("--heartbeat-interval must be shorter than --heartbeat-timeout")
        if self.lease_s <= self.heartbeat_timeout_s:
            raise SettingsError("--lease must be longer than --heartbeat-timeout")
        if self.retry_cap_s < self.retry_base_s:
            raise SettingsError("--retry-cap must not be shorter than --retry-base")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    coordinator: str = setting("127.0.0.1:8080", "--coordinator", "Coordinator address.",
                               address=True)
    grpc_addr: str = setting(
        "127.0.0.1:0", "--grpc-addr", "Address this worker listens on (port 0: any free port).",
        address=True)
    advertise: str | None = setting(None, "--advertise", "Address the coordinator dials.",
                                    address=True, default_text="the bound address")
    worker_id: str | None = setting(None, "--worker-id", "Stable worker id.",
                                    default_text="host name plus a random suffix")
    concurrency: int = setting(5, "--concurrency", "Tasks run at the same time.",
                               min=1, max=10_000)
    queue_size: int = setting(100, "--queue-size", "Tasks held waiting for a free executor.",
                              min=0, max=1_000_000)
    executor: str = setting(
        "echo", "--executor",
        "echo: record the command as output. shell: run it with /bin/sh (anyone who can "
        "reach the API can then run commands).", choices=("echo", "shell"))
    drain_grace_s: float = setting(30.0, "--drain-grace",
                                   "On SIGTERM, seconds running tasks get to finish.", min=0)
    # Reports are flushed when this many are waiting, or after report_flush_s.
    report_batch: int = setting(256, "--report-batch",
                                "Most task reports sent to the coordinator in one call.",
                                min=1, max=100_000)
    report_flush_s: float = setting(
        0.005, "--report-flush",
        "Seconds a task report waits for others to share its call to the coordinator.",
        min=0, max=10)
    rpc_timeout_s: float = setting(
        5.0, "--rpc-timeout",
        "Seconds a call to the coordinator may take before it is given up and retried.",
        min=0.1)
    metrics_addr: str | None = _metrics_addr()
    tls: TlsFiles | None = None
    # Run shell commands as this user (when the worker runs as root).
    run_as: str | None = setting(None, "--run-as",
                                 "Run shell commands as this user (the worker must run as "
                                 "root).", default_text="the worker's own user")

    def __post_init__(self) -> None:
        _check_fields(self)
