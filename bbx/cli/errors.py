"""The one place where exceptions become operator messages and exit codes.

Operator mistakes (wrong password, unknown builder, malformed config, unreachable master)
end in one line on stderr and a non-zero exit — never a traceback. Under --json the same
failure is also one JSON object on stdout: {"error": message, "exit": code}.

The exit-code table below is the one the README prints (tests/test_cli_exit_codes.py checks
that they agree); every command uses these names.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_NOT_FOUND = 5
EXIT_UNTRUSTED = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C

# code -> meaning, in the README's words ("Exit codes" section).
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the command failed (no slave attached, slave busy, build FAILURE/EXCEPTION/"
                 "CANCELLED/RETRY, a stage of `bbx doctor`, a role not running)",
    EXIT_USAGE: "bad usage or configuration (port in use, already running, builder without "
                "steps, malformed master.toml); the line says what to fix",
    EXIT_UNREACHABLE: "cannot connect: the master (or, for `bbx slave status`, the slave's "
                      "master) did not answer in time, or refused the connection",
    EXIT_REFUSED: "the login was refused (wrong name or password)",
    EXIT_NOT_FOUND: "not found: no such builder, slave or build",
    EXIT_UNTRUSTED: "the master's TLS certificate was refused (not signed by --ca, not for the "
                    "host dialled, not the --fingerprint pinned, expired); the line says which",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class BbxError(Exception):
    """An operator-facing failure: `message` is printed as one line, `exit_code` is returned."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BbxError):
    """Bad arguments or configuration given by the operator."""

    exit_code = EXIT_USAGE


class Unreachable(BbxError):
    """The master could not be reached, or a stage of the conversation did not answer in time."""

    exit_code = EXIT_UNREACHABLE


class Refused(BbxError):
    """The master refused the login."""

    exit_code = EXIT_REFUSED


class NotFound(BbxError):
    """The master has no builder, slave or build of that name."""

    exit_code = EXIT_NOT_FOUND


class Untrusted(BbxError):
    """The master's TLS certificate did not pass the check (wrong CA, name or fingerprint)."""

    exit_code = EXIT_UNTRUSTED


class Interrupted(BbxError):
    """The operator pressed Ctrl-C."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str = "interrupted"):
        super().__init__(message)


# The control errors (bbx/pb/control.py) that mean "no such thing"; every other one is a
# command that failed.
NOT_FOUND_ERRORS = ("UnknownBuilder", "UnknownSlave", "UnknownBuild")


# ... and those that are a configuration problem on the master.
USAGE_ERRORS = ("NoSteps",)


def control_exit_code(remote_type: str) -> int:
    """The exit code for a control error type name as it came over PB (bbx.pb.control)."""
    name = remote_type.rpartition(".")[2]
    if name in NOT_FOUND_ERRORS:
        return EXIT_NOT_FOUND
    return EXIT_USAGE if name in USAGE_ERRORS else EXIT_FAILED


def from_failure(failure) -> BbxError:
    """Map a Twisted Failure from a control call or a login to a BbxError."""
    from bbx.pb import control, endpoints

    value = failure.value
    if isinstance(value, BbxError):
        return value
    if isinstance(value, endpoints.LoginFailed):
        if value.untrusted:
            return Untrusted(value.reason)
        if value.unauthorized:
            return Refused(value.reason)
        if value.unreachable:
            return Unreachable(value.reason)
        return BbxError(value.reason)
    if failure.check(*control.CONTROL_ERROR_TYPES):
        kind = failure.type if isinstance(failure.type, str) else failure.type.__name__
        return BbxError(failure.getErrorMessage(), control_exit_code(str(kind)))
    if failure.check(ValueError):
        return UsageError(str(value))
    from twisted.internet import error
    from twisted.spread import pb

    if failure.check(pb.PBConnectionLost, error.ConnectionLost, error.ConnectionDone):
        return Unreachable("lost the connection to the master")
    return BbxError(f"unexpected error: {failure.getErrorMessage()}")


def json_requested(argv: list[str]) -> bool:
    """True when --json is among bbx's own arguments (not after `--`, where a command's are)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def report(error: BbxError, *, as_json: bool = False) -> int:
    """Print one line for `error` on stderr (and, under --json, one object on stdout); return
    its exit code."""
    if as_json:
        import json  # only errors under --json need it; `bbx --help` should not pay for it

        sys.stdout.write(json.dumps({"error": error.message, "exit": error.exit_code}) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"bbx: {error.message}\n")
    sys.stderr.flush()
    return error.exit_code
