"""Apply `schema/NNNN_name.sql` migrations in order, once each, under an advisory lock.

Every server command runs this at start, so N replicas starting together must be safe:
the whole run holds a transaction-level advisory lock, and each file is applied in the
same transaction that records it in `schema_migrations`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from tm.aio.pg import Connection, Database

log = structlog.get_logger(__name__)

# Arbitrary but fixed: "TM" in ASCII, so other users of advisory locks are unlikely to clash.
MIGRATION_LOCK = 0x544D_0001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def schema_dir() -> Path:
    """`TM_SCHEMA_DIR`, else the repository's `schema/` next to the `tm` package."""
    override = os.environ.get("TM_SCHEMA_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "schema"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or schema_dir()
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {directory}")
    if not migrations:
        raise ValueError(f"no migrations found in {directory}")
    return migrations


async def migrate(db: Database, directory: Path | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    migrations = load_migrations(directory)

    async def work(conn: Connection) -> list[int]:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
        return applied

    applied = await db.transaction(work)
    if applied:
        log.info("migrations applied", action="migrate", versions=applied)
    return applied
