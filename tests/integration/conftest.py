"""`db_url`: a migrated database shared by one module's tests and emptied before each test.

Cloning and dropping a database costs 1-2 s on a server with fsync on (tests/conftest.py's
`database_url` does that per test); emptying the tables costs milliseconds. Tests that need
a database nobody else has touched (the migration tests) use `empty_database_url` or
`database_url` instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import admin, new_database_name, with_database


@pytest.fixture(scope="module")
def module_database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    name = new_database_name()
    admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    try:
        yield with_database(pg_server_url, name)
    finally:
        admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(module_database_url: str) -> str:
    """A migrated database with no tasks and no workers."""
    admin(module_database_url, "TRUNCATE tasks, workers")
    return module_database_url
