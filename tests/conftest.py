"""Suite-wide pytest configuration: how the tests share out over pytest-xdist workers.

`make test` runs the suite on several workers with `--dist loadgroup` (see the Makefile). Every
test is scheduled on its own, except that all tests of a module which uses a module-scoped (or
wider, per-module) fixture form one xdist group: they run on one worker, in file order, as they
do serially. Without that, each worker that drew one of the module's tests would set up its own
copy of the fixture — a real Buildbot master, a farm of master and slaves — which costs the CPU
the whole suite is short of, and a test that (knowingly or not) relies on what an earlier test
of its module left in the shared fixture would run without it.

A module can still set its own group with `pytestmark = pytest.mark.xdist_group("name")`
(for example two modules that must not run at the same time); an explicit mark wins.

The session-wide fixtures for a real PostgreSQL server (pg_server, pg_url) live here too.
"""

from __future__ import annotations

import signal

import pytest

def pytest_configure(config: pytest.Config) -> None:
    """Undo an ignored SIGINT before any test starts a child (runs in every xdist worker too).

    A shell starts a background job (`make test &`, a script run by a CI runner) with SIGINT
    ignored; ignored signals survive fork and exec, and Python and Twisted then leave SIGINT
    ignored in every bbx process a test starts — so the tests that press Ctrl-C (SIGINT to a
    foreground master, slave or CLI) waited for an exit that never came.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Fixture scopes set up once per module (or per class of a module), and so
# shared by tests of one module only.
_SHARED_SCOPES = {"module", "class"}


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            if fixturedef.scope in _SHARED_SCOPES:
                return True
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests of each module that shares a module-scoped fixture (see the docstring)."""
    shared_modules = {item.module.__name__ for item in items
                      if getattr(item, "module", None) is not None and _uses_module_fixture(item)}
    for item in items:
        module = getattr(item, "module", None)
        if module is None or module.__name__ not in shared_modules:
            continue
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(module.__name__))


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
