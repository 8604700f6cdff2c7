"""bbx: a Buildbot-compatible build farm — master and slaves over Perspective Broker, one CLI."""

__version__ = "0.1.0"
