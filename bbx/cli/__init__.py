"""The `bbx` command line. Each command module imports its heavy modules inside its functions.

Command modules (the ones whose functions typer turns into commands) do not use `from __future__
import annotations`: typer would then eval every parameter's annotation from a string, twice
per command, for every command `--help` lists (a sixth of `bbx --help`; tests/test_cli_startup.py).
"""

import sys
from typing import Annotated

import typer

from . import errors, params

params.install()

app = typer.Typer(
    name="bbx",
    help="A Buildbot-compatible build farm: master, slaves, and the operator's commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def versions() -> dict[str, str]:
    """bbx's, Twisted's and Python's versions (read from package metadata: importing Twisted
    just to ask would cost a tenth of a second)."""
    import platform
    from importlib import metadata

    import bbx

    try:
        twisted = metadata.version("twisted")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        twisted = "not installed"
    return {"bbx": bbx.__version__, "twisted": twisted, "python": platform.python_version()}


def _version(value: bool) -> None:
    if value:
        v = versions()
        if errors.json_requested(sys.argv[1:]):
            import json

            typer.echo(json.dumps(v))
        else:
            typer.echo(f"bbx {v['bbx']} (Twisted {v['twisted']}, Python {v['python']})")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_version,
        help="Print the versions of bbx, Twisted and Python, and exit.")] = False,
    json: Annotated[bool, typer.Option("--json", hidden=True,
                                       help="With --version: print them as JSON.")] = False,
) -> None:
    """A Buildbot-compatible build farm: master, slaves, and the operator's commands."""


# Which module defines each top-level command. Only the invoked command's module is loaded
# and turned into click objects (typer builds every registered command's parameters on every
# run: ~20 ms for all of them); --help, completion and unknown names get every command.
COMMAND_MODULES = {
    "master": "master", "slave": "slave", "completion": "completion",
    "ping": "ops", "info": "ops", "slaves": "ops", "builders": "ops", "masters": "ops",
    "run": "run", "build": "builds", "builds": "history", "log": "history", "cancel": "history",
    "doctor": "doctor",

}
_GROUPS = ("master", "slave", "completion")
_registered: set[str] = set()


def register(only: str | None = None) -> typer.Typer:
    """Add the command `only` (or, with None, every command) to `app`; returns `app`."""
    import importlib

    names = [m for m in dict.fromkeys(COMMAND_MODULES.values())
             if only is None or m == COMMAND_MODULES.get(only)]  # only="" registers none
    for name in names:
        if name in _registered:
            continue
        _registered.add(name)
        module = importlib.import_module(f"{__name__}.{name}")
        if name in _GROUPS:
            app.add_typer(module.app, name=name)
        else:
            module.register(app)
    return app


def _command_word(args: list[str]) -> str | None:
    """The top-level command named on the command line, if one it knows (else None: all)."""
    for arg in args:
        if arg == "--":
            return None
        if arg == "--version":
            return ""  # answered by the root callback: no command needed
        if not arg.startswith("-"):
            return arg if arg in COMMAND_MODULES else None
    return None


def _usage_error(e) -> errors.UsageError:
    """A click usage error as one line naming the problem and where to read more."""
    ctx = getattr(e, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return errors.UsageError(f"{e.format_message()}{where}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn every failure into one line."""
    import os

    try:
        from typer._click import exceptions
    except ImportError:  # older typer, on click itself
        from click import exceptions
    args = sys.argv[1:] if argv is None else argv
    as_json = errors.json_requested(args)
    if os.environ.get("_BBX_COMPLETE"):
        # The shell asks for completions: typer's completion classes are registered only
        # with add_completion=True, which would also cost every run their import.
        from typer.completion import completion_init

        completion_init()
    register(None if os.environ.get("_BBX_COMPLETE") else _command_word(args))
    if not sys.stdout.isatty():
        # Help into a pipe or a file is plain text: typer's rich help costs ~40 ms of imports
        # (rich's markdown, traceback, syntax modules) to draw boxes nobody sees.
        app.rich_markup_mode = None
    interrupted = (KeyboardInterrupt, typer.Abort, getattr(exceptions, "Abort", typer.Abort))
    try:
        code = app(args=args, prog_name="bbx", standalone_mode=False)
    except errors.BbxError as e:
        sys.exit(errors.report(e, as_json=as_json))
    except exceptions.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `bbx` or `bbx master` alone: the help
            e.show()
            sys.exit(e.exit_code)
        sys.exit(errors.report(_usage_error(e), as_json=as_json))
    except exceptions.ClickException as e:
        sys.exit(errors.report(errors.UsageError(e.format_message()), as_json=as_json))
    except interrupted:
        sys.exit(errors.report(errors.Interrupted(), as_json=as_json))
    sys.exit(code if isinstance(code, int) else 0)
