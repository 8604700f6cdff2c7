"""What `bbx run` and `bbx build` show on a terminal: the command and its directory, not the
environment dump nor Buildbot's bookkeeping lines (unless --verbose); the status lines; and a
pipe that still gets every header line. Rendered to recorded rich Consoles."""

from __future__ import annotations

import io

from rich.console import Console
from twisted.internet import defer, task

from bbx.cli import render
from bbx.cli.builds import BuildSession
from bbx.cli.headers import HeaderFilter
from bbx.cli.run import RunSession

# A worker's shell header, as a bbx slave or a buildbot-worker sends it, in pieces cut anywhere.
HEADER = ("make check\n in dir /b/linux/build (timeout 1200 s)\n watching logfiles {}\n"
          " argv: ['make', 'check']\n environment:\n  HOME=/home/b\n  PATH=/usr/bin:/bin\n"
          "  GITHUB_TOKEN=ghp_secret\n using PTY: False\n")
ENVELOPES = [
    [[{"header": HEADER[:70]}, 0]],
    [[{"header": HEADER[70:123]}, 0]],  # cut inside the environment block
    [[{"header": HEADER[123:]}, 0], [{"stdout": "compiling\n"}, 0]],
    [[{"stderr": "a warning\n"}, 0], [{"header": "elapsedTime=0.523000\n"}, 0],
     [{"rc": 0}, 0]],
]
HIDDEN = ("watching logfiles", "argv:", "environment:", "HOME=", "PATH=", "GITHUB_TOKEN",
          "using PTY", "elapsedTime")


def terminal(width: int = 100) -> Console:
    return Console(record=True, force_terminal=True, width=width, file=io.StringIO(),
                   color_system=None)


def shown(console: Console) -> str:
    # The sinks write output straight to the console's file (the bulk path), rules and
    # summaries through console.print: the file holds all of it, in order.
    return console.file.getvalue()


def test_run_on_a_terminal_shows_the_command_and_its_directory_only():
    out, err = terminal(), terminal()
    session = RunSession(out, err)
    for envelope in ENVELOPES:
        session.update(envelope)
    text = shown(out)
    assert "make check\n" in text and " in dir /b/linux/build (timeout 1200 s)\n" in text
    assert "compiling\n" in text and "a warning\n" in text
    for word in HIDDEN:
        assert word not in text, word


def test_run_verbose_shows_every_header_line_with_secrets_masked():
    out, err = terminal(), terminal()
    session = RunSession(out, err, verbose=True)
    for envelope in ENVELOPES:
        session.update(envelope)
    text = shown(out)
    for word in HIDDEN:
        assert word in text, word
    assert "ghp_secret" not in text  # masked as `bbx log` masks it


def test_a_pipe_still_gets_every_header_line_on_stderr_and_stdout_byte_for_byte():
    out = Console(file=io.StringIO(), width=100)  # not a terminal
    err = Console(file=io.StringIO(), width=100)
    session = RunSession(out, err)
    stdout, stderr = io.BytesIO(), io.BytesIO()
    session.sink._out, session.sink._err = stdout, stderr
    for envelope in ENVELOPES:
        session.update(envelope)
    assert stdout.getvalue() == b"compiling\n"
    for word in HIDDEN:
        assert word.encode() in stderr.getvalue(), word


def test_build_on_a_terminal_hides_the_bookkeeping_of_each_step_and_shows_step_n_of_m():
    out, err = terminal(), terminal()
    clock = task.Clock()
    session = BuildSession(out, err)
    session.reactor, session.done = clock, defer.Deferred()
    session.build_started({"build_id": 7, "number": 3, "builder": "linux", "slave": "s1",
                           "steps": ["compile", "test"], "request_id": 4})
    session.step_started({"build_id": 7, "number": 1, "name": "compile", "kind": "shell"})
    for envelope in ENVELOPES:
        session.update(envelope)
    clock.advance(65)
    session._tick(clock)
    text = shown(out)
    assert "make check\n" in text and " in dir /b/linux/build" in text and "compiling" in text
    for word in HIDDEN:
        assert word not in text, word
    assert "▶ step 1 of 2 · compile · 1m05s" in text, text
    # The next step's header starts afresh (the filter is not stuck in an environment block).
    session.step_started({"build_id": 7, "number": 2, "name": "test", "kind": "shell"})
    session.update([[{"header": "make test\n in dir /b/linux/build\n"}, 0]])
    assert "make test\n" in shown(out)


def test_build_verbose_shows_every_header_line():
    out, err = terminal(), terminal()
    session = BuildSession(out, err, verbose=True)
    session.reactor = task.Clock()
    session.step_started({"number": 1, "name": "compile", "kind": "shell"})
    for envelope in ENVELOPES:
        session.update(envelope)
    for word in HIDDEN:
        assert word in shown(out), word


def test_header_filter_keeps_a_cut_line_with_its_start():
    f = HeaderFilter()
    assert f.feed(" environment:\n  HOME=/ho") == ""
    assert f.feed("me/b\n  X=1\n using PT") == ""
    assert f.feed("Y: False\nkilled 2 more processes\n") == "killed 2 more processes\n"
    assert f.feed("command timed out: 3 seconds without output, attempting to kill\n") != ""


def test_waiting_for_a_slave_is_shown_with_the_place_in_line():
    line = render.waiting_line({"builder": "linux", "position": 2, "busy": ["s1", "s2"]})
    assert line == ("every slave of builder linux is busy (s1, s2); waiting, 2nd in line "
                    "(Ctrl-C leaves the line)")
    console = terminal()
    console.print(render.waiting_status({"builder": "linux", "position": 1}, 12))
    assert "⏳ waiting for a free slave of linux · 1st in line · 12.0s" in console.export_text()
