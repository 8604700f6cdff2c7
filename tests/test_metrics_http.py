"""/metrics and /healthz of both roles, scraped over real HTTP on loopback (port 0)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from bbx import metrics
from tests.buildfarm import master_toml, running_farm
from tests.support import BBX, Proc, run_bbx, wait_until

BUILDERS = '''
[[builders]]
name = "b"
slaves = ["s1"]
[[builders.steps]]
command = "echo twelve bytes"
'''


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    yield from running_farm(tmp_path_factory.mktemp("metrics"), master_toml(
        BUILDERS, slaves=(("s1", 1), ("s2", 1)), master_extra='http = "tcp:0:interface=127.0.0.1"'),
        "s1")


def test_master_metrics_count_slaves_builds_and_log_bytes(farm):
    url = (farm.dir / "master.http").read_text().strip()
    assert farm.bbx("build", "b").returncode == 0
    status, kind, text = get(url + "metrics")
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    values = metrics.parse(text)
    assert values["bbx_master_slaves_configured"] == 2
    assert values["bbx_master_slaves_connected"] == 1
    assert values['bbx_master_builds_total{result="success"}'] >= 1
    assert values["bbx_master_builds_running"] == 0 and values["bbx_master_requests_queued"] == 0
    assert values["bbx_master_slaves_attaching"] == 0
    assert values["bbx_master_slaves_attach_waiting"] == 0
    assert values["bbx_master_log_bytes_received_total"] >= len("twelve bytes\n")
    assert values["bbx_master_store_write_seconds_count"] >= 1
    assert "# TYPE bbx_master_keepalive_rtt_seconds histogram" in text


def test_a_refused_login_is_counted_by_reason(farm):
    assert farm.bbx("ping", "b", "--user", "admin", "--password", "bad").returncode == 4
    url = (farm.dir / "master.http").read_text().strip()
    values = metrics.parse(get(url + "metrics")[2])
    assert values['bbx_master_logins_refused_total{reason="wrong password"}'] >= 1


def test_master_healthz_is_ok_while_it_serves(farm):
    url = (farm.dir / "master.http").read_text().strip()
    assert get(url + "healthz")[:1] == (200,) and get(url + "healthz")[2] == "ok\n"
    assert "/metrics" in get(url)[2]


def test_slave_metrics_and_healthz_follow_its_connection(farm, tmp_path):
    basedir = tmp_path / "s2"
    assert run_bbx("slave", "create", basedir, f"127.0.0.1:{farm.port}", "s2", "wrong").returncode == 0
    proc = Proc([BBX, "slave", "start", basedir, "--http", "tcp:0:interface=127.0.0.1"],
                log_path=tmp_path / "s2.out")
    try:
        url = wait_until(lambda: (basedir / "slave.http").exists()
                         and (basedir / "slave.http").read_text().strip(), 20, what="slave.http")
        wait_until(lambda: "unauthorized" in get(url + "healthz")[2], 20, what="a refused login")
        status, _, text = get(url + "healthz")
        assert status == 503 and text.startswith("unhealthy: not attached to the master")
        values = metrics.parse(get(url + "metrics")[2])
        assert values["bbx_slave_connected"] == 0
        assert values['bbx_slave_connect_failures_total{reason="unauthorized"}'] >= 1
    finally:
        proc.terminate()
    assert not (basedir / "slave.http").exists()


def test_slave_counts_commands_and_output(farm):
    assert farm.bbx("run", "b", "--", "echo", "hello").returncode == 0
    basedir = farm.root / "s1"
    # s1 was started without --http: restart it with it.
    farm.slaves["s1"].terminate()
    proc = Proc([BBX, "slave", "start", basedir, "--http", "tcp:0:interface=127.0.0.1"],
                log_path=farm.root / "s1-http.out")
    farm.slaves["s1"] = proc
    proc.wait_for_output("message from master: attached", 30)
    url = wait_until(lambda: (basedir / "slave.http").exists()
                     and (basedir / "slave.http").read_text().strip(), 20, what="slave.http")
    assert farm.bbx("run", "b", "--", "echo", "hello").returncode == 0
    values = metrics.parse(get(url + "metrics")[2])
    assert values["bbx_slave_connected"] == 1
    assert values['bbx_slave_commands_total{command="shell"}'] == 1
    assert values["bbx_slave_output_sent_total"] >= len("hello\n")
    assert get(url + "healthz")[0] == 200


def test_registry_text_format():
    r = metrics.Registry()
    c = r.counter("x_total", "Things.", ["kind"])
    c.inc(kind='a"b')
    c.inc(2, kind="c")
    g = r.gauge("g", "A gauge.", read=lambda: 3)
    h = r.histogram("h_seconds", "Latency.", buckets=(0.1, 1.0))
    h.observe(0.05)
    h.observe(0.5)
    h.observe(5)
    text = r.render()
    assert '# TYPE x_total counter\nx_total{kind="a\\"b"} 1\nx_total{kind="c"} 2' in text
    assert "g 3" in text and g.current() == {(): 3}
    assert 'h_seconds_bucket{le="0.1"} 1\nh_seconds_bucket{le="1.0"} 2\nh_seconds_bucket{le="+Inf"} 3' in text
    assert "h_seconds_count 3" in text
    with pytest.raises(ValueError):
        r.counter("x_total", "again")
