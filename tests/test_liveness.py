"""Issue 8 case 7: with the DEFAULTS, a silently vanished peer is noticed within 90 s on both
sides, and a master that sends nothing of its own (0.8, or 4.3 between its hourly prints)
is not dropped while the link is healthy.

Before: the master dropped a silent slave after 180 s (plus up to 45 s until its next
periodic check); the slave, with create-worker's 600 s keepalive and a 2 x 600 + 30 s
deadline, after 1,230 s. Long waits run on `task.Clock`; one real-socket test per side uses
a proxy that stops forwarding, with short settings.
"""

from __future__ import annotations

import time
import tomllib

import pytest
from twisted.cred import portal
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock
from twisted.spread import pb
from twisted.test import iosim
from zope.interface import implementer

from bbx.pb.liveness import KEEPALIVE_DEADLINE, KEEPALIVE_INTERVAL, SilenceWatchdog
from tests.buildfarm import Farm, master_toml
from tests.proxy import FreezableProxy
from tests.support import BBX, Proc, run_bbx, wait_until

# The promise: a vanished peer is noticed within this long, with the defaults.
NOTICED_WITHIN = 90.0


# -- the defaults themselves ---------------------------------------------------------------------

def test_the_defaults_notice_a_silent_peer_within_90_seconds(tmp_path):
    from bbx.master.config import load_config
    from bbx.slave import basedir

    made = run_bbx("master", "create", tmp_path / "m")
    assert made.returncode == 0, made.stderr
    master = load_config(tmp_path / "m")
    assert master.keepalive_interval == KEEPALIVE_INTERVAL == 30
    assert master.keepalive_timeout == KEEPALIVE_DEADLINE <= NOTICED_WITHIN
    made = run_bbx("slave", "create", tmp_path / "s", "127.0.0.1:9989", "s1", "pw")
    assert made.returncode == 0, made.stderr
    slave = basedir.load(tmp_path / "s")
    assert slave.keepalive == 30 and slave.keepalive_deadline <= NOTICED_WITHIN
    assert tomllib.loads((tmp_path / "s" / "slave.toml").read_text())["slave"]["keepalive"] == 30


# -- the watchdog both roles use, on the clock ----------------------------------------------------

def _watchdog(deadline=KEEPALIVE_DEADLINE):
    clock = task.Clock()
    heard = [0.0]
    fired = []
    dog = SilenceWatchdog(clock, deadline, lambda: heard[0], fired.append)
    dog.start()
    return clock, heard, fired, dog


def test_the_watchdog_fires_exactly_at_the_deadline_after_the_last_byte():
    clock, heard, fired, dog = _watchdog()
    clock.advance(40)
    heard[0] = clock.seconds()  # something arrived at 40 s
    clock.advance(89.9)
    assert not fired
    clock.advance(0.1)
    assert fired == [pytest.approx(90.0)] and not dog.running


def test_the_watchdog_never_fires_while_answers_keep_coming():
    clock, heard, fired, _ = _watchdog()
    for _ in range(int(3600 / KEEPALIVE_INTERVAL)):  # an hour of keepalive answers
        clock.advance(KEEPALIVE_INTERVAL)
        heard[0] = clock.seconds()
    assert not fired


def test_a_stopped_watchdog_never_fires():
    clock, _, fired, dog = _watchdog()
    dog.stop()
    clock.advance(1000)
    assert not fired and not clock.getDelayedCalls()


# -- the master side with its defaults, on the clock -----------------------------------------------

def _master_side(tmp_path):
    from bbx.master.builder import Builder
    from bbx.master.config import load_config
    from bbx.master.link import SlaveLink
    from bbx.master.slave import SlavePerspective
    from bbx.pb.dialect import Dialect
    from tests.test_master_attach import _FakeBroker, _SilentMind

    assert run_bbx("master", "create", tmp_path, "--slave", "w1:pw").returncode == 0
    config = load_config(tmp_path)  # the defaults: nothing rewritten
    clock = task.Clock()
    builders = {b.name: Builder(b) for b in config.builders}
    slave = SlavePerspective(config.slaves[0], config, builders, clock)
    link = SlaveLink(_FakeBroker(), _SilentMind(), clock, slave="w1")
    link.dialect = Dialect.WORKER
    slave._accept(link)
    return clock, slave, link


def test_master_defaults_keep_an_answering_slave_and_drop_a_vanished_one_within_90_s(tmp_path):
    clock, slave, link = _master_side(tmp_path)
    prints = 0
    for _ in range(120):  # an hour: the slave answers every keepalive print
        clock.advance(KEEPALIVE_INTERVAL)
        sent = sum(1 for c in link.mind.calls if c[0] == "print")
        if sent > prints:
            prints = sent
            link.broker.last_received = clock.seconds()
    assert slave.link is link and prints == 120
    vanished = clock.seconds()  # from now on nothing arrives
    while slave.link is link and clock.seconds() - vanished < 10 * NOTICED_WITHIN:
        clock.advance(1)
    assert slave.link is None and link.broker.transport.aborted
    assert clock.seconds() - vanished <= NOTICED_WITHIN


# -- the slave side with its defaults, on the clock, against a master that never speaks first ----

class _QuietPerspective(pb.Avatar):
    """A slave-era master's perspective: answers keepalive, never calls the slave."""

    def __init__(self):
        self.keepalives = 0

    def perspective_keepalive(self):
        self.keepalives += 1


@implementer(portal.IRealm)
class _QuietRealm:
    def __init__(self):
        self.perspective = _QuietPerspective()

    def requestAvatar(self, avatar_id, mind, *interfaces):
        return pb.IPerspective, self.perspective, lambda: None


def test_slave_defaults_stay_attached_to_a_quiet_master_and_drop_it_within_90_s(tmp_path):
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    from bbx.slave import basedir
    from bbx.slave.bot import Bot
    from bbx.slave.connection import SlaveConnection

    config = basedir.create(tmp_path / "s", name="s1", password="pw",
                            connection="tcp:host=127.0.0.1:port=9989")
    reactor = MemoryReactorClock()
    bot = Bot(config.basedir, reactor, shutdown=lambda: None)
    conn = SlaveConnection(reactor, config.connection, "s1", "pw", bot,
                           keepalive=config.keepalive, deadline=config.keepalive_deadline,
                           policy=lambda attempt: 3600.0)
    realm = _QuietRealm()
    checker = InMemoryUsernamePasswordDatabaseDontUse(s1=b"pw")
    server_factory = pb.PBServerFactory(portal.Portal(realm, [checker]))
    conn.start()
    client_factory = reactor.tcpClients[0][2]
    client = client_factory.buildProtocol(None)
    server = server_factory.buildProtocol(None)
    pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                         client, iosim.FakeTransport(client, isServer=False), greet=True)
    for _ in range(50):
        pump.pump()
    assert conn.attached
    for _ in range(120 * KEEPALIVE_INTERVAL):  # an hour, one second at a time, link healthy
        reactor.advance(1)
        pump.pump()
    # One every 30 s, each scheduled once the last is answered (a second later, here).
    assert conn.attached and realm.perspective.keepalives >= 110
    vanished = reactor.seconds()  # the master vanishes: nothing is delivered any more
    while not client.transport.disconnecting and reactor.seconds() - vanished < 10 * NOTICED_WITHIN:
        reactor.advance(1)
    assert client.transport.disconnecting, "the slave aborted the connection"
    assert reactor.seconds() - vanished <= NOTICED_WITHIN
    for _ in range(5):  # let the abort take effect
        pump.pump()
    assert not conn.attached


# -- real sockets: a proxy that stops forwarding, short settings ----------------------------------

def test_both_ends_notice_a_frozen_link_through_a_proxy(tmp_path):
    farm = Farm(tmp_path, master_toml('[[builders]]\nname = "b"\nslaves = ["s1"]\n',
                                      master_extra="keepalive_interval = 1\nkeepalive_timeout = 3"))
    proxy = None
    proc = None
    try:
        farm.start_master()
        proxy = FreezableProxy(farm.port)
        d = tmp_path / "s1"
        made = run_bbx("slave", "create", d, f"127.0.0.1:{proxy.port}", "s1", "pw-s1",
                       "--keepalive", "1", "--keepalive-timeout", "3", "--maxdelay", "60")
        assert made.returncode == 0, made.stderr
        proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "s1.out")
        proc.wait_for_output("message from master: attached", timeout=30)
        wait_until(lambda: "s1" in farm.attached(), 20, what="s1 attached")
        master_log = farm.dir / "master.log"
        proxy.freeze()
        wait_until(lambda: "slave s1 silent for" in master_log.read_text(), 15,
                   what="the master to declare s1 gone")
        proc.wait_for_output("sent nothing for", timeout=15)
        assert "s1" not in farm.attached()
    finally:
        if proc is not None:
            proc.terminate()
        if proxy is not None:
            proxy.close()
        farm.stop()


def test_a_quiet_real_buildbot_master_does_not_make_the_slave_drop_it(tmp_path):
    """Buildbot 4.3 prints to a worker once an hour; the slave's keepalive answers are the
    only traffic, and they must keep a 3 s deadline from firing for 12 s."""
    from tests.realmaster import RealMaster

    master = RealMaster.start(tmp_path / "realmaster", worker="w1", password="pw")
    proc = None
    try:
        d = tmp_path / "s"
        made = run_bbx("slave", "create", d, master.address, "w1", "pw", "--keepalive", "1",
                       "--keepalive-timeout", "3")
        assert made.returncode == 0, made.stderr
        proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "s.out")
        proc.wait_for_output("attached to the master at", timeout=30)
        end = time.monotonic() + 12  # four deadlines; fail at the first sign of a drop
        while time.monotonic() < end:
            out = proc.output()
            assert "sent nothing for" not in out and "retrying" not in out, out[-2000:]
            time.sleep(0.2)
    finally:
        if proc is not None:
            proc.terminate()
        master.stop()
