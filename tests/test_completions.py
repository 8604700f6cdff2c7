"""completions/bbx.{bash,zsh,fish} are what the app generates, and they complete dynamically."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import BBX

COMPLETIONS = Path(__file__).resolve().parent.parent / "completions"
SHELLS = ("bash", "zsh", "fish")


def bbx_with(env: dict) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("_BBX", "_TYPER", "COMP_"))}
    full.update(env)
    result = subprocess.run([BBX], env=full, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_completion_script_is_current(shell):
    # Regenerate with: _BBX_COMPLETE=source_SHELL bbx > completions/bbx.SHELL
    generated = bbx_with({"_BBX_COMPLETE": f"source_{shell}"})
    assert (COMPLETIONS / f"bbx.{shell}").read_text() == generated


def test_completion_is_dynamic_so_new_commands_need_no_new_script():
    # The scripts call `bbx` at completion time: every registered command shows up.
    words = bbx_with({"_BBX_COMPLETE": "complete_bash", "COMP_WORDS": "bbx ", "COMP_CWORD": "1"}).split()
    for command in ("ping", "info", "slaves", "builders", "run", "master", "slave"):
        assert command in words
    assert "bbx" in (COMPLETIONS / "bbx.bash").read_text()
    assert "ping" not in (COMPLETIONS / "bbx.bash").read_text()


def test_options_complete_after_a_command():
    words = bbx_with({"_BBX_COMPLETE": "complete_bash", "COMP_WORDS": "bbx run --w", "COMP_CWORD": "2"})
    assert words.split() == ["--workdir"]


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_show_prints_the_committed_script(shell):
    from tests.support import run_bbx

    result = run_bbx("completion", "show", shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (COMPLETIONS / f"bbx.{shell}").read_text()


@pytest.mark.parametrize("shell, where", [
    ("bash", ".local/share/bash-completion/completions/bbx"),
    ("zsh", ".zfunc/_bbx"),
    ("fish", ".config/fish/completions/bbx.fish"),
])
def test_completion_install_writes_where_the_shell_looks(shell, where, tmp_path):
    from tests.support import run_bbx

    env = {"HOME": str(tmp_path), "SHELL": f"/bin/{shell}", "XDG_DATA_HOME": "", "XDG_CONFIG_HOME": ""}
    result = run_bbx("completion", "install", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / where).read_text() == (COMPLETIONS / f"bbx.{shell}").read_text()


def test_completion_install_for_an_unknown_shell_is_one_line():
    from tests.support import run_bbx

    result = run_bbx("completion", "install", "tcsh")
    assert result.returncode == 2 and "choose one of: bash, zsh, fish" in result.stderr
