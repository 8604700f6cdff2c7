"""How bbx interrupts a command: a first signal, a grace, then SIGKILL — and how that is said
to a slave in Buildbot's shell arguments (docs/protocol.md §6.1).

bbx's own model is the one an operator expects (Buildkite's cancel, `timeout -k`): send
`signal` to the whole tree, then SIGKILL whatever is left after `grace` seconds. Buildbot's
shell arguments say something else — `sigtermTime` means "SIGTERM first, then
`interruptSignal` after that many seconds" — so `buildbot_kill_args` translates. Both ends and
the CLI import this module: the names, the defaults and the one translation live here.
"""

from __future__ import annotations

import math
import signal

# What `bbx run`, `bbx cancel` and a master.toml step send first, and how long the tree has
# before SIGKILL: Buildkite's cancel grace (10 s), and TERM as every init system sends it.
DEFAULT_INTERRUPT_SIGNAL = "TERM"
DEFAULT_KILL_AFTER = 10.0

# The longest grace accepted (a day): a typo of 36000 for 3600 should not leave a tree for weeks.
MAX_KILL_AFTER = 86400.0

# bbx's own shell argument, beside Buildbot's: seconds from the last Buildbot signal to
# SIGKILL, for a first signal other than TERM or KILL. A Buildbot worker ignores unknown
# arguments (it only checks requiredArgs), so it is safe to send to any peer.
SIGKILL_TIME_ARG = "sigkillTime"


class BadSignal(ValueError):
    """A signal name or number that is not a signal of this platform."""


def signal_name(value) -> str:
    """The bare name ("TERM", "INT", "KILL") of a signal given as "SIGTERM", "term", 15 or "15";
    BadSignal naming the value otherwise."""
    word = str(value).strip().upper()
    try:
        if word.lstrip("-").isdigit():
            return signal.Signals(int(word)).name[3:]
        name = word if word.startswith("SIG") else "SIG" + word
        return signal.Signals[name].name[3:]
    except (KeyError, ValueError):
        raise BadSignal(f"{value!r} is not a signal; give a name such as TERM, INT, HUP or KILL") from None


def kill_after(value) -> float:
    """Seconds of grace, checked: finite, 0 <= value <= MAX_KILL_AFTER; ValueError otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_KILL_AFTER:
        raise ValueError(f"{value!r} seconds is not between 0 and {MAX_KILL_AFTER:g}")
    return seconds


def buildbot_kill_args(first_signal: str, grace: float) -> dict:
    """The shell arguments that make a slave send `first_signal`, then SIGKILL after `grace`.

    TERM: Buildbot's own `sigtermTime` (TERM, then `interruptSignal` KILL), so a real
    buildbot-worker does exactly the same. KILL (or no grace): `interruptSignal` at once.
    Any other signal: `interruptSignal` at once, and bbx's `sigkillTime` for the SIGKILL —
    a buildbot-worker sends the signal and, as Buildbot does, gives up after 5 s.
    """
    name = signal_name(first_signal)
    if name == "KILL":
        return {"sigtermTime": None, "interruptSignal": "KILL"}
    if name == "TERM":
        if grace <= 0:
            return {"sigtermTime": None, "interruptSignal": "KILL"}
        return {"sigtermTime": grace, "interruptSignal": "KILL"}
    return {"sigtermTime": None, "interruptSignal": name, SIGKILL_TIME_ARG: grace}
