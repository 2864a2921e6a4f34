"""Fixtures shared by integration and e2e tests: a PostgreSQL server and fresh databases.

`TM_TEST_DATABASE_URL` (any database on the server; the tests create their own) is used when
set; otherwise a throwaway cluster is started for the session (see tests/pgserver.py).
Each test gets its own database, cloned from a migrated template.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.pgserver import admin, new_database_name, with_database
from tm.devdb import throwaway_postgres

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    given = os.environ.get("TM_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """A database migrated once by `tm migrate`, to clone per test."""
    name = new_database_name("tm_template")
    admin(pg_server_url, f"CREATE DATABASE {name}")
    url = with_database(pg_server_url, name)
    subprocess.run([sys.executable, "-m", "tm", "migrate", "--database-url", url],
                   check=True, timeout=60, cwd=REPO, capture_output=True)
    try:
        yield name
    finally:
        admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = new_database_name()
    admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    try:
        yield with_database(pg_server_url, name)
    finally:
        admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = new_database_name()
    admin(pg_server_url, f"CREATE DATABASE {name}")
    try:
        yield with_database(pg_server_url, name)
    finally:
        admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
