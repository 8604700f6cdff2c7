"""Slaves chosen by tags: master.toml's `tags`, tags a slave offers itself (`bbx slave create
--tag`, docs/protocol.md §3.1, §4.7), builders selecting by names, tags or both — checked on a
real master with real slave processes."""

from __future__ import annotations

import json

import pytest

from bbx.master.config import ConfigError, SlaveConfig, BuilderConfig, parse_config, render_config
from bbx.master.selection import serves, unserved
from bbx.pb.tags import MAX_TAGS, offered_tags
from tests.buildfarm import Farm, master_toml
from tests.support import run_bbx, wait_until


def _config(tmp_path, slaves: str, builders: str):
    text = (f'[master]\nlisten = "tcp:0:interface=127.0.0.1"\n\n{slaves}\n'
            f'[control]\nusers = [{{ name = "admin", password = "pw" }}]\n\n{builders}')
    return parse_config(text, tmp_path / "master.toml")


SLAVES = '''[[slaves]]
name = "a"
password = "pa"
tags = ["linux", "x86_64"]

[[slaves]]
name = "b"
password = "pb"
'''


def test_a_builder_selects_by_names_by_tags_or_both(tmp_path):
    config = _config(tmp_path, SLAVES, '''
[[builders]]
name = "named"
slaves = ["b"]

[[builders]]
name = "tagged"
slaves = { tags = ["linux"] }

[[builders]]
name = "both"
slaves = { names = ["b"], tags = ["linux", "x86_64"] }
''')
    named, tagged, both = config.builders
    assert config.slave("a").tags == ("linux", "x86_64")
    assert (named.slaves, named.tags) == (("b",), ())
    assert (tagged.slaves, tagged.tags) == ((), ("linux",))
    assert [serves(tagged, s.name, s.tags) for s in config.slaves] == [True, False]
    # Both: the named slave always, plus every slave with all the tags.
    assert [serves(both, s.name, s.tags) for s in config.slaves] == [True, True]
    assert serves(tagged, "b", ("linux", "docker"))  # a tag b offers itself counts
    assert not serves(both, "c", ("linux",))  # all tags must match


@pytest.mark.parametrize("value, problem", [
    ('{ tags = [] }', "selects no slave"),
    ('{ tags = ["linux"], os = "x" }', "unknown key 'os'"),
    ('{ tags = ["two words"] }', "is not a tag"),
    ('{ names = ["nobody"] }', "slave 'nobody' is not configured"),
    ('"a"', "must be a list of slave names or a table"),
    ('[]', "non-empty list"),
])
def test_a_bad_selection_names_file_line_and_fix(tmp_path, value, problem):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, SLAVES, f'[[builders]]\nname = "x"\nslaves = {value}\n')
    message = str(e.value)
    assert problem in message
    line = len((f'[master]\nlisten = "tcp:0:interface=127.0.0.1"\n\n{SLAVES}\n[control]\n'
                'users = [{ name = "admin", password = "pw" }]\n\n[[builders]]\nname = "x"\n')
               .splitlines()) + 1
    assert message.startswith(f"{tmp_path / 'master.toml'}:{line}: builders[0].slaves")
    assert "write slaves = " in message or "write tags = " in message or "use one of" in message


def test_a_bad_slave_tag_is_refused_with_its_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, '[[slaves]]\nname = "a"\npassword = "p"\ntags = ["ok", "no way"]\n',
                "")
    assert ":7: slaves[0].tags: 'no way' is not a tag" in str(e.value)


def test_rendered_config_with_tags_loads_back(tmp_path):
    text = render_config("tcp:0", [SlaveConfig("a", "p", tags=("linux",))],
                         [BuilderConfig("t", (), "t", tags=("linux", "docker")),
                          BuilderConfig("u", ("a",), "u", tags=("gpu",))], [])
    config = parse_config(text, tmp_path / "master.toml")
    assert config.slave("a").tags == ("linux",)
    assert [(b.slaves, b.tags) for b in config.builders] == [((), ("linux", "docker")),
                                                             (("a",), ("gpu",))]


def test_offered_tags_are_optional_bounded_and_never_fatal():
    assert offered_tags(None) == ((), [])
    assert offered_tags("linux docker\n")[0] == ("linux", "docker")  # an info/tags file
    tags, problems = offered_tags(["linux", "bad tag", "x" * 100, 7, "linux"])
    assert tags == ("linux",) and len(problems) == 3
    tags, problems = offered_tags([f"t{i}" for i in range(200)])
    assert len(tags) == MAX_TAGS and problems
    assert offered_tags({"a": 1})[0] == ()
    assert offered_tags("x" * 100_000) [0] == ()


def test_checkconfig_warns_about_a_builder_no_configured_slave_can_serve(tmp_path):
    (tmp_path / "master.toml").write_text(
        f'[master]\nlisten = "tcp:0:interface=127.0.0.1"\n\n{SLAVES}\n'
        '[control]\nusers = [{ name = "admin", password = "pw" }]\n\n'
        '[[builders]]\nname = "gpu"\nslaves = { tags = ["linux", "gpu"] }\n\n'
        '[[builders]]\nname = "lin"\nslaves = { tags = ["linux"] }\n')
    result = run_bbx("master", "checkconfig", tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "warning:" in line]
    assert len(warnings) == 1, result.stdout
    assert "builder 'gpu' needs tags linux, gpu" in warnings[0]
    assert "bbx slave create --tag" in warnings[0]  # a slave offering them could still serve
    assert "gpu: slaves tags linux+gpu" in result.stdout
    assert unserved(parse_config((tmp_path / "master.toml").read_text(),
                                 tmp_path / "master.toml"))


FARM_BUILDERS = '''
[[builders]]
name = "docker"
slaves = { tags = ["linux", "docker"] }

[[builders]]
name = "linux"
slaves = { tags = ["linux"] }

[[builders]]
name = "only-s2"
slaves = ["s2"]
[[builders.steps]]
command = ["echo", "named"]
'''


def _farm_toml() -> str:
    toml = master_toml(FARM_BUILDERS, slaves=(("s1", 1), ("s2", 1)))
    # s1 is "linux" in master.toml; s2 has no tags there.
    return toml.replace('name = "s1"\npassword = "pw-s1"', 'name = "s1"\npassword = "pw-s1"\n'
                        'tags = ["linux"]')


def test_builds_route_to_the_slave_whose_own_and_configured_tags_match(tmp_path):
    farm = Farm(tmp_path, _farm_toml())
    try:
        farm.start_master()
        # s1 offers docker itself (master.toml says linux); s2 offers docker only.
        for name, tags in (("s1", ["docker"]), ("s2", ["docker", "arm64"])):
            made = run_bbx("slave", "create", tmp_path / name, f"127.0.0.1:{farm.port}", name,
                           f"pw-{name}", "--maxdelay", "1",
                           *[a for t in tags for a in ("--tag", t)])
            assert made.returncode == 0, made.stderr
        assert 'tags = ["docker"]' in (tmp_path / "s1" / "slave.toml").read_text()
        farm.start_slave("s1")
        farm.start_slave("s2")

        slaves = {s["name"]: s for s in json.loads(farm.bbx("slaves", "--json").stdout)}
        assert slaves["s1"]["tags"] == ["linux", "docker"]
        assert slaves["s2"]["tags"] == ["docker", "arm64"]
        assert slaves["s1"]["builders"] == ["docker", "linux"]
        assert slaves["s2"]["builders"] == ["only-s2"]

        builders = {b["name"]: b for b in json.loads(farm.bbx("builders", "--json").stdout)}
        assert builders["docker"]["tags"] == ["linux", "docker"]
        assert builders["docker"]["attached"] == builders["docker"]["usable"] == ["s1"]
        assert builders["only-s2"]["usable"] == ["s2"]
        table = farm.bbx("builders")
        assert table.returncode == 0 and "tags linux+docker" in table.stdout

        for run in range(2):  # every run lands on s1, the only slave with both tags
            ran = farm.bbx("run", "docker", "--", "echo", f"tagged-{run}")
            assert ran.returncode == 0, ran.stderr
            assert f"tagged-{run}" in ran.stdout
        assert {b["slave"] for b in farm.builds()} == {"s1"}
        assert farm.bbx("build", "only-s2").returncode == 0
        assert farm.builds()[0]["slave"] == "s2"
    finally:
        farm.stop()


def test_a_builder_without_a_matching_attached_slave_says_so(tmp_path):
    farm = Farm(tmp_path, _farm_toml())
    try:
        farm.start_master()
        farm.start_slave("s2")  # no tags at all
        ran = farm.bbx("run", "linux", "--", "true")
        assert ran.returncode == 1
        assert ran.stderr.strip().splitlines() == [
            "bbx: builder linux has no attached slave (configured: tags linux)"]
        wait_until(lambda: "s2" in farm.attached(), 10, what="s2 still attached")
    finally:
        farm.stop()


def test_an_info_tags_file_offers_tags_and_junk_in_it_is_bounded_not_fatal(tmp_path):
    """What a real buildbot-worker sends with an info/tags file: one str of words. Bad words
    are dropped, and more than MAX_TAGS are cut, with a warning in the master's log."""
    farm = Farm(tmp_path, _farm_toml())
    try:
        farm.start_master()
        made = run_bbx("slave", "create", tmp_path / "s2", f"127.0.0.1:{farm.port}", "s2",
                       "pw-s2", "--maxdelay", "1")
        assert made.returncode == 0, made.stderr
        junk = " ".join(f"extra{i}" for i in range(100))
        (tmp_path / "s2" / "info" / "tags").write_text(f"linux, b\x01d {junk}\n")
        farm.start_slave("s2")
        slaves = {s["name"]: s for s in json.loads(farm.bbx("slaves", "--json").stdout)}
        tags = slaves["s2"]["tags"]
        assert tags[0] == "linux" and len(tags) == MAX_TAGS and "b\x01d" not in tags
        assert slaves["s2"]["builders"] == ["linux", "only-s2"]
        log = farm.master.output()
        assert "ignored a tag" in log and f"more than {MAX_TAGS} tags" in log
        ran = farm.bbx("run", "linux", "--", "echo", "via-info-file")
        assert ran.returncode == 0 and "via-info-file" in ran.stdout
    finally:
        farm.stop()


def test_the_builder_index_picks_exactly_what_builders_for_picks():
    """BuilderIndex (master start, reconfig) is a faster builders_for: same builders, same order."""
    import random
    from types import SimpleNamespace

    from bbx.master import selection

    rng = random.Random(7)
    alphabet = ["linux", "arm", "gpu", "docker", "win", "big"]
    slaves = [f"s{i}" for i in range(40)]
    builders = {}
    for i in range(60):
        names = tuple(rng.sample(slaves, rng.randint(0, 3)))
        tags = tuple(rng.sample(alphabet, rng.randint(0 if names else 1, 3)))
        config = SimpleNamespace(slave_set=frozenset(names), tags=tags)
        builders[f"b{i}"] = SimpleNamespace(config=config)
    index = selection.BuilderIndex(builders)
    for slave in slaves + ["stranger"]:
        tags = rng.sample(alphabet, rng.randint(0, 4))
        expected = selection.builders_for(builders, slave, tags)
        got = index.for_slave(slave, tags)
        assert list(got) == list(expected), (slave, tags)
