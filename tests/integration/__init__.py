"""Integration tests: real PostgreSQL (see tests/conftest.py for where it comes from)."""
