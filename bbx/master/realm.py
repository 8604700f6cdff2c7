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

from .link import peer_text

log = Logger()


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


@implementer(ICredentialsChecker, IRealm)
class Dispatcher:
    """Checker and realm at once: checks the md5 challenge, then picks the perspective.

    `slaves` maps name -> SlavePerspective; `control` maps name -> (password, factory) where
    factory(name) returns a ControlPerspective.
    """

    credentialInterfaces = (credentials.IUsernameHashedPassword, credentials.IUsernamePassword)

    def __init__(self, slaves: dict, passwords: dict[str, str], control_factory):
        self.slaves = slaves
        self.passwords = passwords  # every login name -> its password (slaves and control users)
        self.control_factory = control_factory

    def requestAvatarId(self, creds):
        """Check a login; fire with the name, or fail with UnauthorizedLogin (logged, no password)."""
        name = _text(creds.username)
        password = self.passwords.get(name)
        if password is not None and creds.checkPassword(password.encode("utf-8")):
            return defer.succeed(name)
        why = "unknown name" if password is None else "wrong password"
        log.warn("refused login as {name!r} from {peer}: {why}", name=name, peer=_peer_of(creds), why=why)
        return defer.fail(error.UnauthorizedLogin(f"refused login as {name!r}"))

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
        perspective = self.control_factory(name)
        if perspective is None:
            return defer.fail(error.UnauthorizedLogin(f"no perspective for {name!r}"))
        return defer.succeed((pb.IPerspective, perspective, lambda: None))
