"""The `bbx` command line. Each command module imports its heavy modules inside its functions."""

from __future__ import annotations

import sys

import typer

from . import errors

app = typer.Typer(
    name="bbx",
    help="A Buildbot-compatible build farm: master, slaves, and the operator's commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _register() -> None:
    from . import master, ops, slave

    app.add_typer(master.app, name="master")
    app.add_typer(slave.app, name="slave")
    ops.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except errors.BbxError as e:
        sys.exit(errors.report(e))
    except KeyboardInterrupt:
        sys.exit(130)
