"""The control vocabulary: what the CLI may ask the master, and the errors it may get back.

The CLI logs in with a control user's name; the master hands it a ControlPerspective whose
`perspective_*` methods are named here. Errors are pb.Error subclasses so that their message
travels to the CLI intact; the CLI shows that message as one line.
"""

from __future__ import annotations

from twisted.spread import pb


class ControlError(pb.Error):
    """Base of every error the master reports to an operator. str(error) is the message."""

    exit_code = 1


class UnknownBuilder(ControlError):
    """The named builder is not configured on this master."""


class UnknownSlave(ControlError):
    """The named slave is not configured on this master."""


class NoSlaveAttached(ControlError):
    """The builder exists but none of its slaves is attached."""


class SlaveTimeout(ControlError):
    """The slave did not answer within the deadline."""


class SlaveBusy(ControlError):
    """Every attached slave of the builder is running something else."""


class CommandFailed(ControlError):
    """The command could not be started on the slave."""


class UnknownBuild(ControlError):
    """No build with that id."""


class NoSteps(CommandFailed):
    """The builder has no [[builders.steps]]: a configuration problem, not a failed build."""


# Error type names as they arrive inside a CopiedFailure on the CLI side.
CONTROL_ERROR_TYPES = tuple(
    f"{__name__}.{cls.__name__}"
    for cls in (ControlError, UnknownBuilder, UnknownSlave, NoSlaveAttached, SlaveTimeout,
                SlaveBusy, CommandFailed, UnknownBuild, NoSteps)
)
