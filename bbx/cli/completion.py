"""bbx completion show | install [bash|zsh|fish]: shell completion for the current user.

The scripts are typer's: they call `bbx` at completion time, so new commands and options
complete without a new script. completions/ in the repository holds the same text
(tests/test_completions.py fails when it is stale; regenerate with `bbx completion show SHELL`).
"""

import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import UsageError

app = typer.Typer(help="Shell completion: print or install the script for bash, zsh or fish.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

SHELLS = ("bash", "zsh", "fish")
PROG = "bbx"
COMPLETE_VAR = "_BBX_COMPLETE"

ShellArgument = Annotated[str | None, typer.Argument(
    metavar="[bash|zsh|fish]", help="The shell (default: the one $SHELL names).")]


def script(shell: str) -> str:
    """The completion script for `shell`, exactly as completions/bbx.SHELL holds it."""
    from typer.completion import completion_init

    try:
        from typer._click.shell_completion import get_completion_class
    except ImportError:  # older typer, on click itself
        from click.shell_completion import get_completion_class
    completion_init()
    # What `_BBX_COMPLETE=source_SHELL bbx` prints: the class's source() and a newline.
    comp = get_completion_class(shell)(None, {}, PROG, COMPLETE_VAR)
    return comp.source() + "\n"


def _shell(shell: str | None) -> str:
    if shell is None:
        shell = Path(os.environ.get("SHELL", "")).name
        if shell not in SHELLS:
            raise UsageError(f"cannot tell the shell from $SHELL ({os.environ.get('SHELL', 'unset')!r}); "
                             "name it: bbx completion install bash|zsh|fish")
    if shell not in SHELLS:
        raise UsageError(f"no completion for shell {shell!r}; choose one of: {', '.join(SHELLS)}")
    return shell


def target(shell: str, home: Path | None = None) -> Path:
    """Where each shell loads a user's completion scripts from without editing its rc file
    (zsh: a directory on $fpath, which the printed hint adds)."""
    home = home or Path.home()
    if shell == "bash":
        data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
        return data / "bash-completion" / "completions" / PROG
    if shell == "zsh":
        return home / ".zfunc" / f"_{PROG}"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return config / "fish" / "completions" / f"{PROG}.fish"


@app.command()
def show(shell: ShellArgument = None) -> None:
    """Print the completion script (e.g. to regenerate completions/bbx.bash)."""
    typer.echo(script(_shell(shell)), nl=False)


@app.command()
def install(shell: ShellArgument = None) -> None:
    """Write the completion script where SHELL finds it for the current user."""
    shell = _shell(shell)
    path = target(shell)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script(shell))
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    typer.echo(f"wrote {path}")
    if shell == "zsh":
        typer.echo("zsh: make sure ~/.zshrc has: fpath+=~/.zfunc; autoload -Uz compinit; compinit")
    elif shell == "bash":
        typer.echo("bash: loaded by bash-completion in new shells (package bash-completion)")
    typer.echo("open a new shell to use it")
