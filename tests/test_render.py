"""bbx/cli/render.py: pure functions rendered to a recording console; bbx/cli/sinks.py: the output sinks."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text

from bbx.cli import render, sinks

NOW = 1_700_000_000.0


def text_of(renderable) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


INFO = {
    "name": "local", "dialect": "worker", "connected_since": NOW - 180, "peer": "10.1.2.3:5555",
    "info": {
        "environ": {"PATH": "/usr/bin", "GITHUB_TOKEN": "ghp_abc", "aws_secret_access_key": "s3",
                    "DB_PASSWD": "pw1", "SSH_KEY_FILE": "k", "MY_CREDENTIALS": "c", "Password": "p"},
        "system": "posix", "numcpus": 8, "basedir": "/srv/slave", "version": "4.3.0",
        "os_release": "6.1.0", "admin": "Ops <ops@example.org>", "host": "rack 7",
        "worker_commands": {"shell": "3.3", "mkdir": "3.1"},
    },
    "commands": {"shell": "3.3", "mkdir": "3.1"},
}


def test_mask_environ_hides_values_of_secret_looking_names_in_any_case():
    masked = render.mask_environ(INFO["info"]["environ"], show=False)
    assert masked["PATH"] == "/usr/bin"
    for name in ("GITHUB_TOKEN", "aws_secret_access_key", "DB_PASSWD", "SSH_KEY_FILE",
                 "MY_CREDENTIALS", "Password"):
        assert masked[name] == render.MASK, name


def test_mask_environ_shows_everything_when_asked_and_never_changes_its_input():
    environ = {"GITHUB_TOKEN": "ghp_abc"}
    assert render.mask_environ(environ, show=True) == {"GITHUB_TOKEN": "ghp_abc"}
    render.mask_environ(environ, show=False)
    assert environ == {"GITHUB_TOKEN": "ghp_abc"}


def test_info_report_shows_every_section_with_secrets_masked():
    out = text_of(render.info_report(INFO, now=NOW))
    for expected in ("local", "worker", "10.1.2.3:5555", "3m ago", "posix", "8", "/srv/slave",
                     "4.3.0", "os_release", "6.1.0", "Ops <ops@example.org>", "rack 7",
                     "/usr/bin", "shell", "3.3", "mkdir", "3.1", render.MASK):
        assert expected in out, expected
    assert "ghp_abc" not in out and "pw1" not in out


def test_info_report_shows_secrets_with_show_secrets():
    out = text_of(render.info_report(INFO, show_secrets=True, now=NOW))
    assert "ghp_abc" in out and render.MASK not in out


def test_slaves_table_marks_connection_and_relative_times():
    slaves = [
        {"name": "local", "connected": True, "connected_since": NOW - 185, "builders": ["b1", "b2"],
         "dialect": "slave", "last_message": NOW - 7},
        {"name": "gone", "connected": False, "connected_since": None, "builders": ["b3"],
         "dialect": None, "last_message": NOW - 2 * 86400},
    ]
    lines = text_of(render.slaves_table(slaves, now=NOW)).splitlines()
    local = next(line for line in lines if "local" in line)
    gone = next(line for line in lines if "gone" in line)
    assert "✓" in local and "3m ago" in local and "b1, b2" in local and "slave" in local and "7s ago" in local
    assert "✗" in gone and "2d ago" in gone and "b3" in gone


def test_builders_table_lists_slaves_and_attached_ones():
    out = text_of(render.builders_table([
        {"name": "linux", "slaves": ["s1", "s2"], "builddir": "linux-dir", "attached": ["s2"]},
        {"name": "mac", "slaves": ["m1"], "builddir": "mac", "attached": []},
    ]))
    linux = next(line for line in out.splitlines() if "linux" in line)
    mac = next(line for line in out.splitlines() if "mac " in line)
    assert "s1, s2" in linux and "linux-dir" in linux
    assert "none" in mac


def test_ping_report_gives_each_rtt_in_ms_and_min_avg_max():
    out = text_of(render.ping_report({"builder": "b", "slave": "s", "rtts": [0.001, 0.003, 0.002]}))
    assert "reply 1: 1.00 ms" in out and "reply 2: 3.00 ms" in out
    assert "min 1.00 / avg 2.00 / max 3.00 ms" in out


def test_relative_time_and_human_bytes():
    assert render.relative_time(None, NOW) == "—"
    assert render.relative_time(NOW - 12, NOW) == "12s ago"
    assert render.relative_time(NOW - 3 * 3600 - 5, NOW) == "3h ago"
    assert render.human_bytes(1000) == "1000 B"
    assert render.human_bytes(3 * 1024 * 1024) == "3.0 MiB"


def test_pipe_output_writes_stdout_byte_for_byte_and_the_rest_to_stderr():
    out, err = io.BytesIO(), io.BytesIO()
    err_console = Console(file=io.StringIO(), color_system=None)
    sink = sinks.PipeOutput(err_console, stdout=out, stderr=err)
    sink.stdout("a\rb ✓")
    sink.header("header line\n")
    sink.stderr("oops\n")
    sink.stdout("\nno newline")
    assert out.getvalue() == "a\rb ✓\nno newline".encode()
    # stderr is no terminal either: headers are plain lines, in order with the command's stderr
    assert err.getvalue() == b"header line\noops\n"
    assert err_console.file.getvalue() == ""
    assert sink.nbytes == len("a\rb ✓\nno newline".encode()) + 5


def test_pipe_output_paints_headers_dim_when_stderr_is_a_terminal():
    out, err = io.BytesIO(), io.BytesIO()
    err_console = Console(file=io.StringIO(), force_terminal=True, color_system="standard")
    sink = sinks.PipeOutput(err_console, stdout=out, stderr=err)
    sink.header("header line\n")
    assert "\x1b[2mheader line" in err_console.file.getvalue() and err.getvalue() == b""


def test_terminal_output_paints_stderr_red_and_keeps_stdout_text_intact():
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=80)
    sink = sinks.TerminalOutput(console)
    sink.status(Text("▶ status"))
    sink.stdout("half a line")
    sink.status(Text("▶ status"))  # not drawn: the output is mid-line
    sink.stderr("bad\n")
    sink.finish(Text("done"))
    written = console.file.getvalue()
    assert "half a line" in written
    assert "\x1b[31mbad\x1b[0m\n" in written
    assert "half a line▶" not in written and "half a line\r" not in written
    assert written.rstrip().endswith("done")


def test_mask_header_masks_secret_environment_lines_only():
    header = "sh -c make\n environment:\n  API_KEY=abc=def\n  PATH=/bin\n argv: ['KEY=1']\n"
    masked = render.mask_header(header, show=False)
    assert "  API_KEY=********\n" in masked and "abc" not in masked
    assert "  PATH=/bin\n" in masked and "argv: ['KEY=1']" in masked
    assert render.mask_header(header, show=True) == header


def test_values_that_look_like_rich_markup_are_shown_literally():
    info = {"name": "s", "info": {"environ": {"PS1": "[bold]$ [/bold]"}, "host": "[red]box"}}
    out = text_of(render.info_report(info, now=NOW))
    assert "[bold]$ [/bold]" in out and "[red]box" in out
    table = text_of(render.builders_table([{"name": "[b]x", "slaves": [], "builddir": "d", "attached": []}]))
    assert "[b]x" in table
