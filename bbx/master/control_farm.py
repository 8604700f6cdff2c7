"""The operator's farm controls on the control perspective: pause, drain and resume a slave.

A mixin of ControlPerspective (bbx/master/control.py), kept apart so each module has one job;
the state machine and its persistence are bbx/master/farmstate.py's.
"""

from __future__ import annotations

from bbx.pb.control import ControlError, UnknownSlave


class FarmControl:
    """perspective_pause / drain / resume. Needs `self.master` (the MasterService, with
    `.farm`, a FarmState) and `self.user`."""

    def _farm_call(self, action: str, slave):
        if not isinstance(slave, str) or not slave:
            raise UnknownSlave(f"{slave!r} is not a slave name; `bbx slaves` lists them")
        d = getattr(self.master.farm, action)(slave, self.user)

        def store_failed(failure):
            from .store import StoreError

            failure.trap(StoreError)
            raise ControlError(f"could not {action} slave {slave}: {failure.value}")
        return d.addErrback(store_failed)

    def perspective_pause(self, slave: str):
        """Pause slave `slave` (a name): it gets no new builds or commands; what runs on it
        goes on. Kept in the store, so it outlives a master restart. Returns {"name",
        "connected", "state", "running_builds": [build ids]}. Raises UnknownSlave."""
        return self._farm_call("pause", slave)

    def perspective_drain(self, slave: str):
        """Drain slave `slave`: pause it and, once every build on it has ended, shut it down
        gracefully (docs/protocol.md §4.5); it stays paused when it comes back. A slave that
        is not attached is only paused. Returns as `pause` (state "draining" or "paused").
        Raises UnknownSlave."""
        return self._farm_call("drain", slave)

    def perspective_resume(self, slave: str):
        """Resume slave `slave`: it takes work again, and a drain not yet carried out is
        called off. Returns as `pause` (state "idle", "building" or "disconnected").
        Raises UnknownSlave."""
        return self._farm_call("resume", slave)

