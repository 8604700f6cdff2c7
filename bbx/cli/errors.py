"""The one place where exceptions become operator messages and exit codes.

Operator mistakes (wrong password, unknown builder, malformed config, unreachable master)
end in one line on stderr and a non-zero exit — never a traceback.
"""

from __future__ import annotations

import sys


class BbxError(Exception):
    """An operator-facing failure: `message` is printed as one line, `exit_code` is returned."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BbxError):
    """Bad arguments or configuration given by the operator."""

    exit_code = 2


class Unreachable(BbxError):
    """The master could not be reached."""

    exit_code = 3


class Refused(BbxError):
    """The master refused the login."""

    exit_code = 4


class Untrusted(BbxError):
    """The master's TLS certificate did not pass the check (wrong CA, name or fingerprint)."""

    exit_code = 6


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
        return BbxError(failure.getErrorMessage())
    if failure.check(ValueError):
        return UsageError(str(value))
    from twisted.spread import pb
    from twisted.internet import error

    if failure.check(pb.PBConnectionLost, error.ConnectionLost, error.ConnectionDone):
        return Unreachable("lost the connection to the master")
    return BbxError(f"unexpected error: {failure.getErrorMessage()}")


def report(error: BbxError) -> int:
    """Print one line for `error` on stderr and return its exit code."""
    sys.stderr.write(f"bbx: {error.message}\n")
    sys.stderr.flush()
    return error.exit_code
