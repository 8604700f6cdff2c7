"""Build and step results, with Buildbot's numbers and Buildbot's meaning.

The numbers are those of buildbot.process.results (Buildbot 0.8 through 4.3), so a result
stored or sent by bbx reads the same to anyone who knows Buildbot:

    SUCCESS=0 WARNINGS=1 FAILURE=2 SKIPPED=3 EXCEPTION=4 RETRY=5 CANCELLED=6

None means "not finished yet" (Buildbot's statusToString(None) is "not finished").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# buildbot.process.results.ALL_RESULTS — stored in the database, so never renumber.
SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)
ALL_RESULTS = (SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED)
NAMES = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")

# buildbot.process.results.worst_status: scanned from the worst down. SKIPPED ranks *below*
# SUCCESS, so a skipped step never spoils a successful build; CANCELLED outranks everything.
_WORST_FIRST = (CANCELLED, RETRY, EXCEPTION, FAILURE, WARNINGS, SUCCESS, SKIPPED)

# buildbot.process.remotecommand.RemoteCommand: decodeRC defaults to {0: SUCCESS}.
DEFAULT_DECODE_RC: Mapping[int, int] = {0: SUCCESS}


def name(result: int | None) -> str:
    """The lower-case name of a result ('success' ...), 'not finished' for None."""
    if result is None:
        return "not finished"
    if result not in ALL_RESULTS:
        return "invalid result"
    return NAMES[result]


def from_name(text: str) -> int:
    """The number of a result name, case-insensitive ('FAILURE' → 2); ValueError otherwise."""
    try:
        return NAMES.index(text.strip().lower())
    except ValueError:
        raise ValueError(f"unknown result {text!r}; use one of {', '.join(NAMES)}") from None


def worst_of(a: int | None, b: int | None) -> int | None:
    """The worse of two results; None (not finished) loses to any result."""
    for result in _WORST_FIRST:
        if result in (a, b):
            return result
    return None


@dataclass(frozen=True)
class FailurePolicy:
    """How a step's result counts towards its build: Buildbot's ResultComputingConfigMixin.

    Defaults are Buildbot's: a failing step fails the build, nothing halts it.
    """

    halt_on_failure: bool = False
    flunk_on_warnings: bool = False
    flunk_on_failure: bool = True
    warn_on_warnings: bool = False
    warn_on_failure: bool = False


DEFAULT_POLICY = FailurePolicy()


def combine(previous: int | None, step: int, policy: FailurePolicy = DEFAULT_POLICY
            ) -> tuple[int | None, bool]:
    """Fold one step's result into the build's: (new build result, stop the build now?).

    Same rules as buildbot.process.results.computeResultAndTermination: a FAILURE counts as
    SUCCESS, WARNINGS or FAILURE according to the policy and halts only with halt_on_failure;
    WARNINGS count as SUCCESS unless warn_on_warnings / flunk_on_warnings; EXCEPTION, RETRY and
    CANCELLED always stop the build.
    """
    counted = step
    terminate = False
    if step == FAILURE:
        if not policy.flunk_on_failure:
            counted = SUCCESS
        if policy.warn_on_failure:
            counted = WARNINGS
        if policy.flunk_on_failure:
            counted = FAILURE
        terminate = policy.halt_on_failure
    elif step == WARNINGS:
        counted = WARNINGS if policy.warn_on_warnings else SUCCESS
        if policy.flunk_on_warnings:
            counted = FAILURE
    elif step in (EXCEPTION, RETRY, CANCELLED):
        terminate = True
    return worst_of(previous, counted), terminate


def step_result(rc: int | None, *, interrupted: bool = False, lost: bool = False,
                failure: str | None = None,
                decode_rc: Mapping[int, int] = DEFAULT_DECODE_RC) -> int:
    """The result of a finished remote command, as Buildbot's BuildStep would judge it.

    - lost (the slave's connection went away): RETRY — BuildStep maps ConnectionLost to RETRY,
      and it wins even over an interrupt;
    - failure (the command could not run, or the slave reported an exception): EXCEPTION;
    - interrupted (stopped by an operator or a timeout): CANCELLED, whatever rc it died with
      (RemoteCommand.results);
    - otherwise rc through decode_rc, and any rc not in it (including None) is FAILURE.
    """
    if lost:
        return RETRY
    if failure:
        return EXCEPTION
    if interrupted:
        return CANCELLED
    if rc in decode_rc:
        return decode_rc[rc]
    return FAILURE


def from_completion(completion: Mapping, decode_rc: Mapping[int, int] = DEFAULT_DECODE_RC) -> int:
    """step_result of the control contract's completion dict {rc, failure, interrupted, lost}."""
    return step_result(
        completion.get("rc"), interrupted=bool(completion.get("interrupted")),
        lost=bool(completion.get("lost")), failure=completion.get("failure"),
        decode_rc=decode_rc)
