"""The master role: configuration, the PB port, slaves, builders, commands, control."""
