"""[[builders.steps]], [[slaves]] max_builds and the store settings in master.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbx.master.config import ConfigError, parse_config

HEAD = '''[master]
listen = "tcp:0"
{master}
[[slaves]]
name = "s1"
password = "p"
{slave}
[[builders]]
name = "b"
slaves = ["s1"]
'''


def config(steps: str, master: str = "", slave: str = ""):
    return parse_config(HEAD.format(master=master, slave=slave) + steps, Path("/m/master.toml"))


def error(steps: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        config(steps, **kwargs)
    return str(info.value)


def test_shell_steps_get_buildbot_shellcommand_defaults():
    [step] = config('[[builders.steps]]\ncommand = ["make", "check"]\n').builders[0].steps
    assert (step.name, step.kind, step.command) == ("make", "shell", ("make", "check"))
    assert (step.workdir, step.timeout, step.max_time, step.env) == ("build", 1200.0, None, ())
    assert (step.halt_on_failure, step.flunk_on_failure, step.warn_on_failure,
            step.always_run, step.log_environ) == (False, True, False, False, True)


def test_every_step_key_is_read():
    [step] = config('''[[builders.steps]]
name = "t"
command = "make test"
workdir = "src"
env = { CC = "clang" }
timeout = 30
maxTime = 600
haltOnFailure = true
flunkOnFailure = false
warnOnFailure = true
alwaysRun = true
logEnviron = false
''').builders[0].steps
    assert (step.command, step.workdir, step.env, step.timeout, step.max_time) == (
        "make test", "src", (("CC", "clang"),), 30.0, 600.0)
    assert (step.halt_on_failure, step.flunk_on_failure, step.warn_on_failure,
            step.always_run, step.log_environ) == (True, False, True, True, False)


def test_transfer_steps_halt_on_failure_by_default_as_buildbot_transfers_do():
    up, down = config('''[[builders.steps]]
upload = { src = "out.tar", dest = "artifacts/out.tar" }
[[builders.steps]]
download = { src = "in.tar", dest = "in.tar" }
''').builders[0].steps
    assert (up.kind, up.src, up.dest, up.name, up.halt_on_failure) == (
        "upload", "out.tar", "artifacts/out.tar", "upload", True)
    assert (down.kind, down.src, down.dest, down.halt_on_failure) == ("download", "in.tar", "in.tar", True)


def test_repeated_step_names_are_made_unique():
    steps = config('[[builders.steps]]\ncommand = "true"\n[[builders.steps]]\ncommand = "true"\n'
                   ).builders[0].steps
    assert [s.name for s in steps] == ["true", "true_1"]


def test_a_builder_without_steps_still_loads():
    assert config("").builders[0].steps == ()


def test_slaves_get_max_builds_default_1_and_the_store_settings_have_defaults():
    loaded = config("", slave="max_builds = 3")
    assert loaded.slaves[0].max_builds == 3
    assert (loaded.db, loaded.retry_lost) == ("bbx.sqlite", 1)
    assert loaded.db_path == Path("/m/bbx.sqlite")
    assert config("").slaves[0].max_builds == 1
    custom = config("", master='db = "h/x.db"\nretry_lost = 0')
    assert (custom.db, custom.retry_lost) == ("h/x.db", 0)


@pytest.mark.parametrize("steps, where, text", [
    ('[[builders.steps]]\nname = "x"\n', ":11:", "needs exactly one of command, upload or download"),
    ('[[builders.steps]]\ncommand = "x"\nupload = { src = "a", dest = "b" }\n', ":11:", "exactly one"),
    ('[[builders.steps]]\ncommand = []\n', ":12:", "non-empty list of strings"),
    ('[[builders.steps]]\ncommand = "x"\nhaltOnFailure = "yes"\n', ":13:", "must be true or false"),
    ('[[builders.steps]]\ncommand = "x"\ntimeout = 0\n', ":13:", "positive number of seconds"),
    ('[[builders.steps]]\ncommand = "x"\ncolour = 1\n', ":13:", "not a known step key"),
    ('[[builders.steps]]\nupload = { src = "a" }\n', ":12:", "src and dest"),
    ('[[builders.steps]]\nupload = { src = "a", dest = "../../etc/x" }\n', ":12:", "leaves the master"),
    ('[[builders.steps]]\ncommand = "x"\nworkdir = "/abs"\n', ":13:", "leaves the builder"),
    ('[[builders.steps]]\ncommand = "x"\nenv = { A = 1 }\n', ":13:", "table of strings"),
])
def test_bad_steps_name_line_key_and_fix(steps, where, text):
    message = error(steps)
    assert where in message and text in message and "steps[0]" in message


def test_bad_max_builds_and_retry_lost_are_refused():
    assert "max_builds" in error("", slave="max_builds = 0")
    assert "retry_lost" in error("", master="retry_lost = -1")
