"""Migrations: the schema they produce, idempotence, N concurrent runners, the `tm migrate` CLI."""

from __future__ import annotations

import json
import os
import sys

import trio

from tests.integration.helpers import open_db
from tm.aio.pg import Connection
from tm.db.migrate import load_migrations, migrate

ALL = [m.version for m in load_migrations()]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASK_COLUMNS = {
    "task_id": "uuid",
    "command": "text",
    "status": "text",
    "scheduled_at": "timestamp with time zone",
    "created_at": "timestamp with time zone",
    "picked_at": "timestamp with time zone",
    "started_at": "timestamp with time zone",
    "completed_at": "timestamp with time zone",
    "failed_at": "timestamp with time zone",
    "cancelled_at": "timestamp with time zone",
    "attempt": "integer",
    "max_attempts": "integer",
    "failures": "integer",
    "losses": "integer",
    "max_losses": "integer",
    "timeout_s": "double precision",
    "at_most_once": "boolean",
    "idempotency_key": "text",
    "worker_id": "text",
    "coordinator_id": "text",
    "lease_expires_at": "timestamp with time zone",
    "exit_code": "integer",
    "output": "text",
    "error": "text",
    "schedule_name": "text",
    "fire_at": "timestamp with time zone",
}

WORKER_COLUMNS = {
    "worker_id": "text",
    "address": "text",
    "state": "text",
    "capacity": "integer",
    "free_slots": "integer",
    "coordinator_id": "text",
    "registered_at": "timestamp with time zone",
    "last_heartbeat_at": "timestamp with time zone",
}


async def test_migrate_creates_schema(empty_database_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(empty_database_url) as db:
            applied = await migrate(db)
            assert applied == [m.version for m in load_migrations()]
            assert 1 in applied

            tables = {
                r["table_name"]
                for r in await db.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            }
            assert {"tasks", "workers", "schema_migrations"} <= tables

            async def columns(table: str) -> dict[str, str]:
                rows = await db.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = $1",
                    table,
                )
                return {r["column_name"]: r["data_type"] for r in rows}

            assert await columns("tasks") == TASK_COLUMNS
            assert await columns("workers") == WORKER_COLUMNS
            assert set(await columns("schema_migrations")) == {"version", "name", "applied_at"}

            indexes = {
                r["indexname"]: r["indexdef"]
                for r in await db.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = 'public' AND tablename = 'tasks'"
                )
            }
            due = indexes["tasks_scheduled_due"]
            assert "(scheduled_at, task_id)" in due
            assert "WHERE (status = 'scheduled'::text)" in due
            for name in (
                "tasks_held_by_worker",
                "tasks_held_lease",
                "tasks_newest",
                "tasks_status_newest",
            ):
                assert name in indexes
            assert "WHERE" in indexes["tasks_held_lease"]
            # idempotency keys are unique (the insert path relies on ON CONFLICT); tasks
            # without one, and tasks still scheduled, cost no entry in those indexes
            key = indexes["tasks_idempotency_key"]
            assert "UNIQUE" in key and "WHERE (idempotency_key IS NOT NULL)" in key
            assert "WHERE (status <> 'scheduled'::text)" in indexes["tasks_left_backlog_at"]
            # listing indexes ascend (new rows append at their right edge)
            assert "(created_at, task_id)" in indexes["tasks_newest"]
            assert "(status, created_at, task_id)" in indexes["tasks_status_newest"]

            recorded = await db.fetch("SELECT version, name FROM schema_migrations")
            assert [(r["version"], r["name"]) for r in recorded] == [
                (m.version, m.name) for m in load_migrations()
            ]

            # the due-task index is what a claim scan uses, however much history there is
            # (an empty table has no statistics: forbid seq scans so the plan is deterministic;
            # what is checked is that the partial index's predicate matches the claim's)
            async def explain(conn: Connection) -> str:
                await conn.execute("SET LOCAL enable_seqscan = off")
                rows = await conn.fetch(
                    "EXPLAIN SELECT task_id FROM tasks WHERE status = 'scheduled' "
                    "AND scheduled_at <= now() ORDER BY scheduled_at, task_id LIMIT 10"
                )
                return "\n".join(r[0] for r in rows)

            assert "tasks_scheduled_due" in await db.transaction(explain)

            # newest first (the listing's order) reads the ascending indexes backwards
            async def explain_listing(conn: Connection) -> str:
                await conn.execute("SET LOCAL enable_seqscan = off")
                await conn.execute("SET LOCAL enable_bitmapscan = off")
                plans = []
                for where in ("", "WHERE status = 'failed'"):
                    rows = await conn.fetch(
                        f"EXPLAIN SELECT task_id FROM tasks {where} "
                        "ORDER BY created_at DESC, task_id DESC LIMIT 10"
                    )
                    plans.append("\n".join(r[0] for r in rows))
                return "\n---\n".join(plans)

            plans = await db.transaction(explain_listing)
            assert "Scan Backward using tasks_newest on tasks" in plans
            assert "Scan Backward using tasks_status_newest on tasks" in plans
            assert "Sort" not in plans


async def test_migrate_twice_applies_nothing(empty_database_url: str) -> None:
    with trio.fail_after(20):
        async with open_db(empty_database_url) as db:
            assert await migrate(db) != []
            assert await migrate(db) == []
            assert await db.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)


async def test_concurrent_migrations_apply_once(empty_database_url: str) -> None:
    results: list[list[int]] = []

    async def one() -> None:
        # each runner has its own loop-bound pool, as separate replicas would
        async with open_db(empty_database_url, max_size=1) as db:
            results.append(await migrate(db))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert len(results) == 4
        assert sorted(results, key=len) == [[], [], [], ALL]
        async with open_db(empty_database_url) as db:
            rows = await db.fetch("SELECT version FROM schema_migrations")
            assert sorted(r["version"] for r in rows) == ALL
            assert await db.fetchval("SELECT count(*) FROM tasks") == 0


async def test_migrate_cli(empty_database_url: str) -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "tm", "migrate", "--database-url", empty_database_url],
            capture_stdout=True,
            capture_stderr=True,
            cwd=REPO,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout.decode().strip().splitlines()[-1]) == {"applied": ALL}

        again = await trio.run_process(
            [sys.executable, "-m", "tm", "migrate"],
            capture_stdout=True,
            capture_stderr=True,
            cwd=REPO,
            check=False,
            env={**os.environ, "TM_DATABASE_URL": empty_database_url},
        )
        assert again.returncode == 0, again.stderr.decode()
        assert json.loads(again.stdout.decode().strip().splitlines()[-1]) == {"applied": []}

        async with open_db(empty_database_url) as db:
            assert await db.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)
