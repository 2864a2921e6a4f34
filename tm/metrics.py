"""Prometheus metrics of every service, in the process-wide default registry.

`tm dev` runs all services in one process, so series carry labels (`worker_id`) rather
than relying on one process per service. Values that are cheaper to read than to track
(pool sizes, queue depths) are set when scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_asgi_app,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# scheduler
TASKS = Gauge("tm_tasks", "Tasks in the database by status (read at scrape).", ["status"])
TASKS_CREATED = Counter("tm_tasks_created_total", "Tasks stored by the HTTP API.")
HTTP_REQUESTS = Counter("tm_http_requests_total", "HTTP requests answered.",
                        ["method", "status"])
INGEST_GROUP_SIZE = Histogram("tm_ingest_group_rows", "Rows per group-committed INSERT.",
                              buckets=BATCH_BUCKETS)

# coordinator
DISPATCH_LATENCY = Histogram(
    "tm_dispatch_latency_seconds", "Due time to claim (scheduled_at to picked), per task.",
    buckets=LATENCY_BUCKETS)
CLAIM_BATCH = Histogram("tm_claim_batch_size", "Tasks claimed per claim statement.",
                        buckets=BATCH_BUCKETS)
DISPATCHED = Counter("tm_tasks_dispatched_total", "Tasks claimed and pushed to workers.")
PUSH_FAILURES = Counter("tm_push_failures_total", "Pushes to workers that failed.")
STALE_REPORTS = Counter("tm_stale_reports_total",
                        "Worker reports ignored because their attempt or state was stale.")
HEARTBEAT_MISSES = Counter("tm_heartbeat_misses_total",
                           "Workers declared lost after missing their heartbeat deadline.")
TASKS_RECOVERED = Counter("tm_tasks_recovered_total",
                          "Tasks taken back from lost workers or expired leases.", ["reason"])
WORKERS = Gauge("tm_workers", "Workers registered with this coordinator.")
WORKER_FREE_SLOTS = Gauge("tm_worker_free_slots",
                          "Free slots a worker advertised (coordinator's view).", ["worker_id"])
SCHEDULE_OCCURRENCES = Counter(
    "tm_schedule_occurrences_total",
    "Occurrences of recurring schedules decided by this coordinator: created (a task), "
    "skipped (overlap) or missed (catch_up).", ["outcome"])
SCHEDULE_LATENESS = Histogram(
    "tm_schedule_lateness_seconds", "Fire time to task creation, per created occurrence.",
    buckets=LATENCY_BUCKETS)

# worker
QUEUE_DEPTH = Gauge("tm_worker_queue_depth", "Tasks held by a worker, not yet started.",
                    ["worker_id"])
RUNNING = Gauge("tm_worker_running", "Tasks executing on a worker.", ["worker_id"])
EXECUTIONS = Counter("tm_worker_executions_total", "Executions finished on a worker.",
                     ["worker_id", "outcome"])
REPORTS_PENDING = Gauge("tm_worker_reports_pending",
                        "Task updates waiting to be delivered to the coordinator.",
                        ["worker_id"])

# database pools
DB_POOL = Gauge("tm_db_pool_connections", "Database pool connections.", ["service", "state"])


def watch_pool(service: str, statistics: Callable[[], dict[str, int]]) -> None:
    """Report a pool's busy/idle connections at scrape time."""
    DB_POOL.labels(service, "busy").set_function(
        lambda: statistics()["size"] - statistics()["idle"])
    DB_POOL.labels(service, "idle").set_function(lambda: statistics()["idle"])


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


async def serve_metrics(
    address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve GET /metrics on `address` until cancelled; reports the bound address."""
    config = Config()
    config.bind = [address]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, make_asgi_app(), config))
        task_status.started(binds[0].split("://", 1)[1])
