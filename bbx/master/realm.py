"""The Dispatcher: one PB port, two kinds of login.

A login name is either a configured slave (-> SlavePerspective, after the attach sequence) or a
control user (-> ControlPerspective). Names are disjoint by configuration, so a slave can never
act as an operator, nor one slave as another (ARCHITECTURE.md, Roles).
"""

from __future__ import annotations

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from bbx.pb.banana import printable

from . import metrics
from .gate import TooManyAttempts
from .link import peer_text

log = Logger()

# How much of a login name a log line shows; the rest is cut (names come from anyone).
NAME_IN_LOG = 64


class WrongRole(pb.Error):
    """A control user's name and password were used to log in as a slave (with a Bot)."""


def _peer_of(creds) -> str:
    """The address of the client behind a PB challenge, for the log ("?" if unknown)."""
    broker = getattr(creds, "broker", None)
    transport = getattr(broker, "transport", None)
    try:
        return peer_text(transport.getPeer()) if transport is not None else "?"
    except Exception:
        return "?"


def _text(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _host_of(creds) -> str:
    """The peer address without the port, as the gate counts it."""
    broker = getattr(creds, "broker", None)
    host = getattr(broker, "peer_host", None)
    return host if isinstance(host, str) else _peer_of(creds).rpartition(":")[0] or "?"


@implementer(ICredentialsChecker, IRealm)
class Dispatcher:
    """Checker and realm at once: checks the md5 challenge, then picks the perspective.

    `slaves` maps name -> SlavePerspective; `control_factory(name)` returns a
    ControlPerspective for a control user's name, else None. With a `gate`
    (bbx/master/gate.py) password checks are paced per peer address and a connection whose
    password was right leaves probation.
    """

    credentialInterfaces = (credentials.IUsernameHashedPassword, credentials.IUsernamePassword)

    def __init__(self, slaves: dict, passwords: dict[str, str], control_factory, gate=None):
        self.slaves = slaves
        self.passwords = passwords  # every login name -> its password (slaves and control users)
        self.control_factory = control_factory
        self.gate = gate

    def requestAvatarId(self, creds):
        """Check a login when its address's turn comes; fire with the name, or fail with
        UnauthorizedLogin (logged with the name cut and escaped, never the password)."""
        name = _text(creds.username)
        password = self.passwords.get(name)

        def check() -> bool:
            return password is not None and creds.checkPassword(password.encode("utf-8"))

        d = self.gate.check(_host_of(creds), check) if self.gate is not None else defer.succeed(check())

        def checked(ok):
            if ok:
                broker = getattr(creds, "broker", None)
                if hasattr(broker, "mark_authenticated"):
                    broker.mark_authenticated()
                return name
            why = "unknown name" if password is None else "wrong password"
            metrics.LOGINS_REFUSED.inc(reason=why)
            line = (f"refused login as '{printable(name, NAME_IN_LOG)}' from {_peer_of(creds)}: "
                    f"{why}")
            if self.gate is not None:
                host = _host_of(creds)
                failures = self.gate.failures(host)
                if failures > 1:
                    line += f" ({failures} in a row from {host})"
                self.gate.log.warn(host, line)
            else:
                log.warn("{line}", line=line)
            raise error.UnauthorizedLogin(f"refused login as '{printable(name, NAME_IN_LOG)}'")

        def busy(failure):
            # Sent as the standard refusal, which every peer retries (a buildbot-worker exits
            # on any other login error, docs/protocol.md §2.3).
            failure.trap(TooManyAttempts)
            self.gate.log.warn(_host_of(creds), f"refused login from {_peer_of(creds)}: "
                                                f"{failure.value}")
            raise error.UnauthorizedLogin(f"too many logins from this address: {failure.value}")

        d.addCallbacks(checked, busy)
        return d

    def requestAvatar(self, avatarId, mind, *interfaces):
        """Return (IPerspective, avatar, logout); for a slave, only once it is attached."""
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("bbx offers only PB perspectives")
        name = _text(avatarId)
        slave = self.slaves.get(name)
        if slave is not None:
            if mind is None:
                log.warn("refused login as {name!r}: a slave name used without a Bot (mind), "
                         "e.g. by the CLI", name=name)
                return defer.fail(error.UnauthorizedLogin("a slave must log in with its Bot"))
            d = slave.attach(mind, mind.broker)

            def attached(link):
                return (pb.IPerspective, slave, lambda: slave.logout(link))

            def failed(failure):
                log.warn("slave {name} from {peer} not attached: {why}", name=name,
                         peer=_peer_of(mind), why=failure.getErrorMessage())
                return failure

            d.addCallbacks(attached, failed)
            return d
        if mind is not None and self.control_factory(name) is not None:
            # A Bot came with a control user's credentials: a slave configured with the wrong
            # name. Refused, so it neither gets a control session nor believes it attached.
            log.warn("refused login as {name!r} from {peer}: a control user's name used by a "
                     "slave (it sent a Bot)", name=name, peer=_peer_of(mind))
            return defer.fail(WrongRole(
                f"{name!r} is a control user, not a slave; give the slave the name and password "
                f"of one of the [[slaves]] in the master's master.toml"))
        perspective = self.control_factory(name)
        if perspective is None:
            return defer.fail(error.UnauthorizedLogin(f"no perspective for {name!r}"))
        return defer.succeed((pb.IPerspective, perspective, lambda: None))
