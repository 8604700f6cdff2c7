"""Fixtures shared by many test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server for this test session (one per xdist worker); tests take a
    fresh database each with `pg_server.new_database()`. Skips, saying why, where the server
    binaries or psycopg are missing."""
    from tests.postgres import PostgresServer, missing_reason

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.new_database()
