"""The slave's metrics (`bbx slave start --http ENDPOINT`): connected or not, reconnects,
commands run, output sent. Hooks: bbx/slave/builder.py (commands, bytes), bbx/slave/__init__.py
(connection states); `bind` points the gauges at the running Slave."""

from __future__ import annotations

from bbx.metrics import Registry

REGISTRY = Registry()

CONNECTED = REGISTRY.gauge("bbx_slave_connected", "1 while attached to the master, else 0.")
RECONNECTS = REGISTRY.counter("bbx_slave_reconnects_total",
                              "Attaches after the first one (the connection was lost and regained).")
CONNECT_FAILURES = REGISTRY.counter("bbx_slave_connect_failures_total",
                                    "Connections or logins that failed, by reason.", ["reason"])
COMMANDS = REGISTRY.counter("bbx_slave_commands_total", "Commands started, by name.", ["command"])
COMMANDS_RUNNING = REGISTRY.gauge("bbx_slave_commands_running", "Commands running now.")
# Characters, not encoded bytes (equal for ASCII): encoding every chunk again just to count it
# would cost the bulk output path (bench/stream.py) a few per cent.
BYTES_SENT = REGISTRY.counter("bbx_slave_output_sent_total",
                              "Characters of command output sent to the master (bytes for ASCII).")

_TEXT_KEYS = ("stdout", "stderr", "header")


def sent(pairs) -> None:
    """Count the output bytes of one update call (the hook where builder.py sends it)."""
    from bbx.pb.updates import iter_updates

    total = 0
    for key, value in iter_updates(pairs):
        if key in _TEXT_KEYS and isinstance(value, (str, bytes)):
            total += len(value)
        elif key == "log" and isinstance(value, (list, tuple)) and len(value) == 2:
            total += len(value[1])
    BYTES_SENT.inc(total)


def bind(slave) -> None:
    """Read the gauges from `slave` (a bbx.slave.Slave) from now on."""
    CONNECTED.read = lambda: 1 if slave.connection.attached else 0
    COMMANDS_RUNNING.read = lambda: sum(1 for b in slave.bot.builders.values()
                                        if b.command is not None)
