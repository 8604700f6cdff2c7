"""How the CLI logs in to a master as a control user and runs one conversation with it, with
a deadline for each stage (connect, login, answer). target.py decides which master and who.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from .errors import BbxError, UsageError
# Re-exported: the commands import the whole connection vocabulary from here.
from .target import (CONFIG_FILE, DEFAULT_LISTEN, ENDPOINT_FILE, LOGIN_TIMEOUT,  # noqa: F401
                     ConnOptions, Target, _split_endpoint, _unescape, client_for_listen,
                     resolve)

_CONN_PANEL = "Connection"

MasterDirOption = Annotated[
    Path | None,
    typer.Option(
        "--master-dir", envvar="BBX_MASTER_DIR", file_okay=False, rich_help_panel=_CONN_PANEL,
        help="The master's directory: read master.toml and master.endpoint there "
        "(default: the current directory when it holds master.toml).",
    ),
]
MasterOption = Annotated[
    str | None,
    typer.Option(
        "--master", envvar="BBX_MASTER", rich_help_panel=_CONN_PANEL,
        help="The master as host[:port] or a Twisted client endpoint (tcp:host=H:port=P, unix:path=...).",
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", envvar="BBX_USER", rich_help_panel=_CONN_PANEL, help="Control user name."),
]
PasswordOption = Annotated[
    str | None,
    typer.Option("--password", envvar="BBX_PASSWORD", rich_help_panel=_CONN_PANEL,
                 help="Control user password."),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="BBX_CA", dir_okay=False, rich_help_panel=_CONN_PANEL,
                 help="TLS: trust the master's certificate if this PEM CA file signed it."),
]
FingerprintOption = Annotated[
    str | None,
    typer.Option("--fingerprint", envvar="BBX_FINGERPRINT", rich_help_panel=_CONN_PANEL,
                 help="TLS: trust only the master certificate with this SHA-256 fingerprint "
                 "(default in the master's directory: its own certificate's)."),
]
InsecureOption = Annotated[
    bool,
    typer.Option("--insecure", envvar="BBX_INSECURE", rich_help_panel=_CONN_PANEL,
                 help="TLS: do not check the master's certificate at all."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print plain JSON instead of tables.")]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", envvar="BBX_TIMEOUT", min=0.1, rich_help_panel=_CONN_PANEL,
    help="Seconds to wait for the connection, then for the login and for each answer.")]
# `bbx run` has its own --timeout (the command's silence limit): there it is --connect-timeout.
ConnectTimeoutOption = Annotated[float, typer.Option(
    "--connect-timeout", envvar="BBX_TIMEOUT", min=0.1, rich_help_panel=_CONN_PANEL,
    help="Seconds to wait for the connection to the master, then for the login.")]


# ---------------------------------------------------------------------------- one conversation


def uses_tls(endpoint: str) -> bool:
    """True for the client endpoint kinds that need Twisted's TLS support."""
    return endpoint.split(":", 1)[0].strip().lower() in ("ssl", "tls")


def load_twisted(*, tls: bool) -> None:
    """Import the reactor, endpoints and PB; without TLS support unless `tls`.

    Twisted imports pyOpenSSL and cryptography whenever they are installed, for TLS it may
    never use: ~45 ms of a 0.25 s `bbx ping` (bench/cli.py --importtime). Twisted is written
    to run without them (endpoints, tcp and posixbase check for ImportError), so for a tcp:
    or unix: master the CLI makes OpenSSL look absent while Twisted is first imported. The
    process talks to one master only, so nothing later needs TLS.
    """
    import sys

    if "twisted.internet.reactor" in sys.modules:
        return
    _defer_cookiejar()
    hidden = not tls and "OpenSSL" not in sys.modules
    if hidden:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # `import OpenSSL` fails
    try:
        import twisted.internet.endpoints  # noqa: F401
        import twisted.internet.reactor  # noqa: F401
        import twisted.spread.pb  # noqa: F401
    finally:
        if hidden:
            del sys.modules["OpenSSL"]


def _defer_cookiejar() -> None:
    """Make `http.cookiejar` load on first use instead of when Twisted is imported.

    twisted.python.compat imports it (for a deprecated alias, `cookielib`), and with it
    urllib.request, http.client and most of the email package: ~35 M instructions, 4 % of a
    `bbx ping` (valgrind), for a module the CLI never uses. A LazyLoader module, set as the
    `http` package's attribute too, satisfies compat's `from http import cookiejar` without
    running it; the first attribute anyone reads loads it for real.
    """
    import importlib.util
    import sys

    if "http.cookiejar" in sys.modules:
        return
    import http

    spec = importlib.util.find_spec("http.cookiejar")
    if spec is None or spec.loader is None:  # pragma: no cover - it is in the standard library
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["http.cookiejar"] = module
    spec.loader.exec_module(module)
    http.cookiejar = module  # type: ignore[attr-defined]


def run_reactor(main: Callable[[Any], Any]):
    """Run the global reactor until `main(reactor)` (a Deferred or coroutine) fires.

    Returns its result or raises its exception; raises errors.Interrupted when something
    else (Twisted's SIGINT handler, `reactor.stop()`) ended the reactor first. Unlike
    twisted.internet.task.react this returns instead of calling sys.exit.
    """
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    from .errors import Interrupted

    outcome: list = []

    def finished(result):
        outcome.append(result)
        if reactor.running:
            reactor.stop()

    def start():
        defer.maybeDeferred(main, reactor).addCallback(
            lambda r: defer.ensureDeferred(r) if _is_coroutine(r) else r).addBoth(finished)

    # Stopped before `main` finished means interrupted, even if `main` then fails because the
    # shutdown closed its connection.
    stopped_early: list[bool] = []
    reactor.addSystemEventTrigger("before", "shutdown", lambda: stopped_early.append(not outcome))
    reactor.callWhenRunning(start)
    from bbx import startup

    startup.resume()
    reactor.run()
    if not outcome or stopped_early[:1] == [True]:
        raise Interrupted()
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _is_coroutine(value) -> bool:
    import inspect

    return inspect.iscoroutine(value)


def to_bbx_error(failure) -> BbxError:
    """errors.from_failure, plus the RemoteError that `await` turns a CopiedFailure into."""
    from twisted.spread.pb import RemoteError

    from bbx.pb.control import CONTROL_ERROR_TYPES
    from bbx.pb.endpoints import remote_type

    from .errors import control_exit_code, from_failure

    value = failure.value
    if isinstance(value, RemoteError):
        kind = remote_type(failure)
        message = str(value)
        if kind in CONTROL_ERROR_TYPES:
            return BbxError(message, control_exit_code(kind))
        return BbxError(f"the master reported an error: {kind.rpartition('.')[2]}: {message}")
    return from_failure(failure)


def login_error(target: Target, e) -> BbxError:
    """A LoginFailed from bbx.pb.endpoints.login as the operator's one line."""
    from .errors import Refused, Unreachable, Untrusted

    if e.untrusted:
        return Untrusted(e.reason)
    if e.unauthorized:
        return Refused("the master refused the login: wrong control user name or password "
                       "(check --user/--password or [control] users in master.toml)")
    if e.timed_out:
        return Unreachable(e.reason)
    if e.unreachable:
        return Unreachable(_unreachable_message(target.endpoint, e.reason))
    return BbxError(e.reason)


def call(options: ConnOptions, fn: Callable[[Any, Any], Any], *, mind=None,
         answer_within: float | None = None, what: str = "the call"):
    """Log in to the master as a control user, run `fn(perspective, reactor)`, disconnect.

    Returns what `fn` returned (it may return a Deferred or a coroutine). The connect and the
    login each have `options.timeout` seconds; with `answer_within`, so has `fn` (named
    `what` in the message). Every expected failure becomes a BbxError with one line:
    unreachable or silent master (exit 3), refused login (exit 4), an error the master
    reported (exit 1, or 5 for "no such builder/slave/build").
    """
    target = resolve(options)
    load_twisted(tls=uses_tls(target.endpoint))

    from twisted.internet import defer
    from twisted.python.failure import Failure

    from bbx.pb import endpoints

    from .errors import Unreachable

    async def conversation(reactor):
        try:
            perspective, broker = await endpoints.login(
                reactor, target.endpoint, target.user, target.password, mind,
                timeout=options.timeout, tls=target.tls)
        except endpoints.LoginFailed as e:
            raise login_error(target, e) from None
        try:
            result = fn(perspective, reactor)
            if _is_coroutine(result):
                result = defer.ensureDeferred(result)
            d = defer.maybeDeferred(lambda: result)
            if answer_within is not None:
                d.addTimeout(answer_within, reactor)
            return await d
        except defer.TimeoutError:
            raise Unreachable(f"the master at {target.endpoint} did not answer {what} within "
                              f"{answer_within:g} s") from None
        except BbxError:
            raise
        except Exception:
            raise to_bbx_error(Failure()) from None
        finally:
            broker.transport.loseConnection()

    try:
        return run_reactor(conversation)
    except ValueError as e:  # a malformed endpoint string
        raise UsageError(str(e)) from None


def _unreachable_message(endpoint: str, reason: str) -> str:
    """'cannot reach the master at E (connection refused); is it running? (bbx master start DIR)'."""
    why = reason
    if "(" in reason and reason.endswith(")"):
        why = reason[reason.rindex("(") + 1 : -1]
    else:
        for joint in (" at ", " to ", " "):
            why = why.replace(f"{joint}{endpoint}", "")
    # Twisted's ConnectError text: "An error occurred while connecting: 2: No such file or directory."
    why = re.sub(r"An error occurred while connecting: (\d+: )?", "", why).rstrip(".")
    if "resolve" in why:
        return f"cannot reach the master at {endpoint} ({why}); check the host name"
    return f"cannot reach the master at {endpoint} ({why}); is it running? (bbx master start DIR)"
