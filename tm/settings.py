"""Settings of each service, as plain frozen dataclasses filled in by the CLI (or tests)."""

from __future__ import annotations

from dataclasses import dataclass

from tm.tls import TlsFiles

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/taskmaster"
MAX_SCHEDULER_PROCESSES = 64


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    database_url: str = DEFAULT_DATABASE_URL
    http_addr: str = "127.0.0.1:8081"
    api_token: str | None = None
    # Workers whose last heartbeat is older than this are not listed by GET /workers.
    worker_timeout_s: float = 5.0
    pool_size: int = 10
    # Processes serving http_addr together (`tm scheduler --processes`; see
    # tm/scheduler/processes.py). `serve_scheduler` itself is always one process.
    processes: int = 1
    # Bind with SO_REUSEPORT, so other processes can listen on the same address and the
    # kernel spreads connections over them. Set for every process of a multi-process
    # scheduler; off otherwise, so a second scheduler on a taken port fails as before.
    reuse_port: bool = False


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    database_url: str = DEFAULT_DATABASE_URL
    grpc_addr: str = "127.0.0.1:8080"
    heartbeat_interval_s: float = 1.0
    # A worker silent for this long is dead: its tasks are recovered.
    heartbeat_timeout_s: float = 5.0
    # A held task whose lease (renewed by heartbeats) expires is recovered even if its
    # coordinator is gone. Must be well above heartbeat_timeout_s.
    lease_s: float = 30.0
    # Backstop scan for due tasks, in case a NOTIFY was missed.
    scan_interval_s: float = 1.0
    max_claim: int = 1000
    push_timeout_s: float = 5.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    pool_size: int = 10
    # Serve Prometheus metrics on this address (None: not served).
    metrics_addr: str | None = None
    tls: TlsFiles | None = None
    # A recurring schedule's occurrence at most this old is on time; older ones were
    # missed while no coordinator ran, and the schedule's catch_up decides about them.
    schedule_grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    coordinator: str = "127.0.0.1:8080"
    grpc_addr: str = "127.0.0.1:0"
    advertise: str | None = None
    concurrency: int = 5
    queue_size: int = 100
    executor: str = "echo"
    worker_id: str | None = None
    # Reports are flushed when this many are waiting, or after report_flush_s.
    report_batch: int = 256
    report_flush_s: float = 0.005
    drain_grace_s: float = 30.0
    rpc_timeout_s: float = 5.0
    metrics_addr: str | None = None
    tls: TlsFiles | None = None
    # Run shell commands as this user (when the worker runs as root).
    run_as: str | None = None
