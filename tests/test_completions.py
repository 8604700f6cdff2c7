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
