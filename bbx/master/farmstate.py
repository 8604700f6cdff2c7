"""What operators made of each slave: active, paused or draining — kept in the store.

    active    takes new builds and commands (the default)
    paused    takes nothing new; what runs goes on (bbx slave pause)
    draining  paused, and shut down gracefully once idle (bbx slave drain); when the slave
              has gone it is paused, so that it takes no work when it comes back
    (bbx slave resume makes any of them active again; a drain not yet carried out is called off)

The state lives in the store's `slave_states` table (docs/protocol.md §4.7), not in a file
beside master.toml: a restarted master reads it back, and the masters of one PostgreSQL farm
share it (a slave paused on one master stays paused when it fails over to another; each
change is an event the others hear through LISTEN/NOTIFY). Only "paused" is stored: draining
is a paused slave with a shutdown pending on the master it is attached to.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from bbx.pb.control import UnknownSlave

log = Logger()

ACTIVE = "active"
PAUSED = "paused"
DRAINING = "draining"
EVENT = "slave_state"


# -- the queries (each runs in one transaction on the store's writer thread) ----------------


def _paused(sql):
    return {row[0] for row in sql.all("SELECT slave FROM slave_states WHERE state = 'paused'")}


def _set(sql, slave, paused, now, who):
    if paused:
        sql.write("INSERT INTO slave_states (slave, state, changed_at, changed_by) "
                  "VALUES (?, 'paused', ?, ?) ON CONFLICT (slave) DO UPDATE SET "
                  "state = excluded.state, changed_at = excluded.changed_at, "
                  "changed_by = excluded.changed_by", (slave, now, who))
    else:
        sql.write("DELETE FROM slave_states WHERE slave = ?", (slave,))
    sql.event(EVENT, slave, PAUSED if paused else ACTIVE)


# -- the state machine ----------------------------------------------------------------------


def describe(slave) -> dict:
    """The "state" of a SlavePerspective for `bbx slaves`, and the build ids running on it:
    draining / paused (an operator's word first), disconnected, building, idle."""
    link = slave.link
    builds = sorted(sb.build.build_id for sb in (link.slave_builders.values() if link else ())
                    if sb.build is not None and sb.build.build_id is not None)
    busy = link is not None and any(sb.busy for sb in link.slave_builders.values())
    if slave.operator_state != ACTIVE:
        state = slave.operator_state
    elif link is None:
        state = "disconnected"
    elif busy:
        state = "building"
    else:
        state = "idle"
    return {"state": state, "running_builds": builds}


class FarmState:
    """Pause, drain and resume the slaves of `slaves` (name -> SlavePerspective), with the
    paused set kept in `store`; `wake` is called when a slave may take work again."""

    def __init__(self, store, slaves: dict, reactor, wake):
        self.store = store
        self.slaves = slaves
        self.reactor = reactor
        self.wake = wake
        self._unsubscribe = None

    @defer.inlineCallbacks
    def start(self):
        """Read the paused slaves back (a restart keeps them paused); follow other masters'
        changes."""
        paused = yield self.store.run_query(_paused, write=False)
        for name in sorted(paused):
            if name in self.slaves:
                self.slaves[name].operator_state = PAUSED
        if paused:
            log.info("paused slave(s), as the store says: {names}", names=", ".join(sorted(paused)))
        self._unsubscribe = self.store.events.subscribe(EVENT, self._heard)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _slave(self, name: str):
        slave = self.slaves.get(name) if isinstance(name, str) else None
        if slave is None:
            choices = ", ".join(sorted(self.slaves)) or "none"
            shown = repr(name[:80] if isinstance(name, str) else name)[:100]
            raise UnknownSlave(f"no slave named {shown} (configured: {choices})")
        return slave

    def _heard(self, _sender, name, state, *_rest) -> None:
        """A change committed by this master or another one of the store."""
        slave = self.slaves.get(name)
        if slave is None:
            return
        if state == ACTIVE and slave.operator_state != ACTIVE:
            self._activate(slave)
        elif state == PAUSED and slave.operator_state == ACTIVE:
            slave.operator_state = PAUSED

    def _activate(self, slave) -> None:
        if slave.operator_state == DRAINING and slave.link is not None:
            slave.link.graceful = False  # the shutdown waiting for idleness is called off
        slave.operator_state = ACTIVE
        self.wake()

    @defer.inlineCallbacks
    def pause(self, name: str, who: str):
        """No new work for slave `name`; fires with its summary's state."""
        slave = self._slave(name)
        yield self.store.run_query(_set, slave.name, True, self.reactor.seconds(), who)
        if slave.operator_state == ACTIVE:
            slave.operator_state = PAUSED
        log.info("{who} paused slave {name}", who=who, name=slave.name)
        return self._answer(slave)

    @defer.inlineCallbacks
    def drain(self, name: str, who: str):
        """Pause slave `name` and shut it down gracefully once idle (not attached: only
        paused). Fires with its summary's state."""
        slave = self._slave(name)
        yield self.store.run_query(_set, slave.name, True, self.reactor.seconds(), who)
        if slave.link is None:
            slave.operator_state = PAUSED
            log.info("{who} drained slave {name}, which is not attached: paused",
                     who=who, name=slave.name)
        else:
            slave.operator_state = DRAINING
            log.info("{who} drains slave {name}: it shuts down once idle", who=who,
                     name=slave.name)
            slave.shutdown_when_idle()
        return self._answer(slave)

    @defer.inlineCallbacks
    def resume(self, name: str, who: str):
        """Slave `name` takes work again; fires with its summary's state."""
        slave = self._slave(name)
        yield self.store.run_query(_set, slave.name, False, self.reactor.seconds(), who)
        if slave.operator_state != ACTIVE:
            self._activate(slave)
        log.info("{who} resumed slave {name}", who=who, name=slave.name)
        return self._answer(slave)

    @staticmethod
    def _answer(slave) -> dict:
        return {"name": slave.name, "connected": slave.link is not None, **describe(slave)}
