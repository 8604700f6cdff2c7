"""The master's metrics: the registry /metrics serves (bbx/master/http.py).

Counters are bumped by one-line hooks where their events happen (build.py, command.py,
slave.py, store.py); gauges read the running MasterService at scrape time (`bind`).
"""

from __future__ import annotations

from bbx.metrics import Registry

REGISTRY = Registry()

SLAVES_CONFIGURED = REGISTRY.gauge("bbx_master_slaves_configured", "Slaves in master.toml.")
SLAVES_CONNECTED = REGISTRY.gauge("bbx_master_slaves_connected", "Slaves attached now.")
BUILDS = REGISTRY.counter("bbx_master_builds_total", "Builds ended, by result.", ["result"])
BUILDS_RUNNING = REGISTRY.gauge("bbx_master_builds_running", "Builds running now.")
REQUESTS_QUEUED = REGISTRY.gauge("bbx_master_requests_queued", "Build requests waiting for a slave.")
COMMANDS_RUNNING = REGISTRY.gauge("bbx_master_commands_running", "Commands running on slaves now.")
LOG_BYTES = REGISTRY.counter("bbx_master_log_bytes_received_total",
                             "Bytes of command output received from slaves.")
KEEPALIVE_RTT = REGISTRY.histogram("bbx_master_keepalive_rtt_seconds",
                                   "Round trip of the master's keepalive to a slave.")
STORE_WRITE = REGISTRY.histogram("bbx_master_store_write_seconds",
                                 "Time for one batch of log to be written to the store.")
ATTACHING = REGISTRY.gauge("bbx_master_slaves_attaching",
                           "Slaves logged in whose attach sequence runs now (at most max_attaching).")
ATTACH_WAITING = REGISTRY.gauge("bbx_master_slaves_attach_waiting",
                                "Slaves logged in and waiting for a turn to attach (a storm).")
LOGINS_REFUSED = REGISTRY.counter("bbx_master_logins_refused_total",
                                  "Logins refused, by reason.", ["reason"])

# The update keys whose values are command output (docs/protocol.md §5.3).
_TEXT_KEYS = ("stdout", "stderr", "header")


def log_bytes(key: str, value) -> None:
    """Count one update's output bytes (the hook in RemoteCommand.remote_update)."""
    if key in _TEXT_KEYS and isinstance(value, (str, bytes)):
        LOG_BYTES.inc(len(value))
    elif key == "log" and isinstance(value, (list, tuple)) and len(value) == 2:
        LOG_BYTES.inc(len(value[1]))


def bind(service) -> None:
    """Read the gauges from `service` (a MasterService) from now on."""
    def commands():
        return sum(1 for s in service.slaves.values() if s.link is not None
                   for sb in s.link.slave_builders.values() if sb.command is not None)

    SLAVES_CONFIGURED.read = lambda: len(service.config.slaves)
    SLAVES_CONNECTED.read = lambda: sum(1 for s in service.slaves.values() if s.link is not None)
    BUILDS_RUNNING.read = lambda: len(service.queue.running)
    REQUESTS_QUEUED.read = lambda: len(service.queue.requests)
    COMMANDS_RUNNING.read = commands
    ATTACHING.read = lambda: service.admission.running
    ATTACH_WAITING.read = lambda: service.admission.waiting
