"""`tm dev`: scheduler, coordinator and workers as one trio nursery tree.

Shutdown runs in dependency order: workers drain first (their last reports still reach the
coordinator), then the coordinator and the scheduler stop.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import structlog
import trio

from tm.coordinator.service import serve_coordinator
from tm.scheduler.service import serve_scheduler
from tm.settings import CoordinatorSettings, SchedulerSettings, WorkerSettings
from tm.worker.service import serve_worker

log = structlog.get_logger(__name__)


async def serve_dev(
    scheduler: SchedulerSettings,
    coordinator: CoordinatorSettings,
    worker: WorkerSettings,
    *,
    workers: int,
    stop: trio.Event,
    announce: bool = False,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    stop_servers = trio.Event()
    stop_workers = trio.Event()
    async with trio.open_nursery() as servers:
        http = await servers.start(
            lambda task_status: serve_scheduler(
                scheduler, stop=stop_servers, task_status=task_status
            )
        )
        grpc = await servers.start(
            lambda task_status: serve_coordinator(
                coordinator, stop=stop_servers, task_status=task_status
            )
        )
        async with trio.open_nursery() as pool:
            for index in range(workers):
                settings = replace(
                    worker,
                    coordinator=grpc,
                    worker_id=worker.worker_id and f"{worker.worker_id}-{index}",
                )
                await pool.start(
                    lambda task_status, s=settings: serve_worker(
                        s, stop=stop_workers, task_status=task_status
                    )
                )
            log.info(
                "dev cluster ready",
                action="dev_ready",
                http=f"http://{http}",
                grpc=grpc,
                workers=workers,
                database=coordinator.database_url,
            )
            if announce:
                print(welcome(http, grpc, workers, coordinator.database_url), flush=True)
            task_status.started({"http": http, "grpc": grpc})
            await stop.wait()
            stop_workers.set()
        stop_servers.set()


def welcome(http: str, grpc: str, workers: int, database_url: str) -> str:
    """What a person needs to start using the dev cluster, ready to paste."""
    return f"""
TaskMaster is running: API http://{http}, coordinator {grpc}, {workers} worker(s).
Dashboard: http://{http}/ui
Database: {database_url}

  curl -X POST {http}/schedule -d '{{"command":"hello","scheduled_at":"2023-12-25T22:34:00+05:30"}}'
  curl {http}/status?task_id=<task-id>
  curl '{http}/tasks?limit=5'
  curl {http}/workers
  {_tm()} submit "echo hi" --url http://{http}

Ctrl-C stops everything (workers finish their tasks first).
"""


def _tm() -> str:
    """How this `tm` was started, so the example runs as pasted (e.g. .venv/bin/tm)."""
    command = sys.argv[0] if sys.argv and sys.argv[0].endswith("tm") else "tm"
    return os.path.relpath(command) if os.path.isabs(command) else command
