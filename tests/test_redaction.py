"""Secrets before they leave the slave: values replaced in output, names masked in info and headers.

The streaming replacement is checked exhaustively (every cut of the output) and against a
plain whole-text replacement on random data; then through real child processes (the driver),
a real bbx master and slave (the master's own store must never see the value), and a real
Buildbot 4.3 master.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path


from bbx.pb.secrets import REDACTED, SecretNames
from bbx.slave.redact import Secrets, StreamRedactor
from tests.buildfarm import Farm, master_toml
from tests.support import BBX, Proc, run_bbx

DRIVER = Path(__file__).with_name("drive_command.py")
PY = sys.executable
R = REDACTED.encode()


def stream(secrets: Secrets, chunks: list[bytes]) -> tuple[bytes, int]:
    """Everything a StreamRedactor lets out for `chunks`, and the most it ever held back."""
    redactor = StreamRedactor(secrets)
    out = []
    held = 0
    for chunk in chunks:
        out.append(redactor.feed(chunk))
        held = max(held, len(redactor._held))
    out.append(redactor.flush())
    return b"".join(out), held


# -- the rule and the replacement, pure ----------------------------------------------------


def test_redact_globs_add_names_to_the_built_in_rule_ignoring_case():
    names = SecretNames(("DEPLOY_*", "*_CERT"))
    for name in ("GITHUB_TOKEN", "deploy_phrase", "Server_Cert", "DB_PASSWD"):
        assert name in names, name
    for name in ("PATH", "DEPLOYMENT", "CERT_DIR"):
        assert name not in names, name


def test_a_secret_files_location_is_masked_by_name_but_not_searched_for_in_output():
    names = SecretNames(("MY_CERT_PATH",))
    assert "SSL_KEY_FILE" in names and not names.value_is_secret("SSL_KEY_FILE")
    assert names.value_is_secret("MY_CERT_PATH")  # named by a glob: the operator wants it hidden
    secrets = Secrets.from_environment({"SSL_KEY_FILE": "/etc/ssl/x.key", "API_KEY": "k3y-value"}, names)
    assert secrets.values == (b"k3y-value",)


def test_short_values_and_flags_are_not_replaced_in_output():
    secrets = Secrets(["abc", "true", "  ", "s3cr3t-value"])
    assert secrets.values == (b"s3cr3t-value",)
    assert secrets.bytes(b"abc true s3cr3t-value") == b"abc true " + R


def test_every_cut_of_the_output_still_redacts_the_secret():
    secret = b"ghp_0123456789abcdef"
    data = b"before " + secret + b" middle " + secret + secret + b" after"
    expected = data.replace(secret, R)
    secrets = Secrets([secret])
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1, 3):
            out, held = stream(secrets, [data[:i], data[i:j], data[j:]])
            assert out == expected, (i, j)
            assert held < len(secret)


def test_a_secret_that_starts_a_longer_one_does_not_hide_the_longer_ones_tail():
    secrets = Secrets([b"abcd", b"abcdef"])
    for cut in range(1, 10):
        data = b"xxabcdefyy abcd!"
        out, held = stream(secrets, [data[:cut], data[cut:]])
        assert out == b"xx" + R + b"yy " + R + b"!", cut
        assert held < 6


def test_random_output_in_random_reads_is_redacted_like_the_whole_text():
    rng = random.Random(8)
    alphabet = b"ab\n-_"
    for _ in range(300):
        values = [bytes(rng.choice(alphabet) for _ in range(rng.randint(4, 9))) for _ in range(3)]
        secrets = Secrets(values)
        data = b"".join(rng.choice([rng.choice(values), bytes([rng.choice(alphabet)])])
                        for _ in range(rng.randint(0, 60)))
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 6)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        out, held = stream(secrets, chunks)
        assert out == secrets.bytes(data), (values, data, cuts)
        assert held <= max(secrets.longest - 1, 0)
        for value in secrets.values:
            assert value not in out


def test_output_without_a_secret_passes_through_untouched_and_unheld():
    secrets = Secrets(["s3cr3t-value"])
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"x" * 100000) == b"x" * 100000
    assert not redactor.pending


# -- through a real child (the driver) -------------------------------------------------------


def drive(tmp_path, args: dict, *extra: str) -> dict:
    proc = subprocess.run([PY, str(DRIVER), str(tmp_path / "builder"), "shell", json.dumps(args), *extra],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    updates = [tuple(line["update"]) for line in lines if "update" in line]
    assert any("complete" in line for line in lines), proc.stdout[-2000:] + proc.stderr[-3000:]
    text = {k: "".join(v for key, v in updates if key == k) for k in ("stdout", "stderr", "header")}
    text["logs"] = "".join(v[1] for key, v in updates if key == "log")
    text["all"] = json.dumps(updates)
    return text


SECRET = "ghp_" + "Z" * 8 + "9876543210"


def test_secrets_from_the_masters_env_are_replaced_in_stdout_stderr_logfiles_and_headers(tmp_path):
    script = ('echo "token=$GITHUB_TOKEN"; echo "$GITHUB_TOKEN" >&2; '
              'echo "in a file: $GITHUB_TOKEN" > out.log; echo "url=https://x:$GITHUB_TOKEN@h" ')
    run = drive(tmp_path, {"workdir": "wd", "command": ["sh", "-c", script],
                           "env": {"GITHUB_TOKEN": SECRET, "URL": f"https://x:{SECRET}@host"},
                           "logfiles": {"out": "out.log"}})
    assert SECRET not in run["all"]
    assert run["stdout"] == f"token={REDACTED}\nurl=https://x:{REDACTED}@h\n"
    assert run["stderr"] == f"{REDACTED}\n"
    assert run["logs"] == f"in a file: {REDACTED}\n"
    assert f"  GITHUB_TOKEN={REDACTED}\n" in run["header"]
    assert f"  URL=https://x:{REDACTED}@host\n" in run["header"]  # a secret inside another value


def test_a_secret_written_in_two_pieces_is_still_caught(tmp_path):
    half = len(SECRET) // 2
    prog = ("import os, sys, time\n"
            f"s = os.environ['API_TOKEN']\n"
            f"os.write(1, b'key: ' + s[:{half}].encode()); time.sleep(0.005)\n"
            f"os.write(1, s[{half}:].encode() + b' done\\n')\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, "-c", prog], "env": {"API_TOKEN": SECRET},
                           "logEnviron": False})
    assert run["stdout"] == f"key: {REDACTED} done\n"


def test_what_only_looks_like_the_start_of_a_secret_is_sent_after_the_pause(tmp_path):
    prog = f"import os, time\nos.write(1, b'{SECRET[:6]}'); time.sleep(2); os.write(1, b'!\\n')\n"
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, "-c", prog], "env": {"API_TOKEN": SECRET},
                           "logEnviron": False})
    assert run["stdout"] == SECRET[:6] + "!\n"


def test_slave_redact_globs_name_more_secrets(tmp_path):
    run = drive(tmp_path, {"workdir": "wd", "command": ["sh", "-c", "echo $DEPLOY_PHRASE"],
                           "env": {"DEPLOY_PHRASE": "open sesame please"}},
                "--secret-glob", "deploy_*")
    assert run["stdout"] == f"{REDACTED}\n"
    assert f"  DEPLOY_PHRASE={REDACTED}\n" in run["header"]


# -- a real bbx master and slave: the master never gets the value ------------------------------


def test_bbx_run_shows_redacted_and_the_masters_store_never_holds_the_value(tmp_path):
    farm = Farm(tmp_path, master_toml('[[builders]]\nname = "b"\nslaves = ["s1"]\n'))
    try:
        farm.start_master()
        made = run_bbx("slave", "create", tmp_path / "s1", f"127.0.0.1:{farm.port}", "s1", "pw-s1",
                       "--maxdelay", "1", "--redact", "DEPLOY_*")
        assert made.returncode == 0, made.stderr
        phrase = "open sesame " + uuid.uuid4().hex
        slave = Proc([BBX, "slave", "start", tmp_path / "s1"], log_path=tmp_path / "s1.out",
                     env={"GITHUB_TOKEN": SECRET, "DEPLOY_PHRASE": phrase})
        farm.slaves["s1"] = slave
        slave.wait_for_output("message from master: attached", 30)
        run = farm.bbx("run", "b", "--log-environ", "--show-secrets", "--", "sh", "-c",
                       "echo $GITHUB_TOKEN; echo $DEPLOY_PHRASE")
        assert run.returncode == 0, run.stderr
        assert run.stdout == f"{REDACTED}\n{REDACTED}\n"
        assert f"GITHUB_TOKEN={REDACTED}" in run.stderr and SECRET not in run.stderr
        info = json.loads(farm.bbx("info", "s1", "--json", "--show-secrets").stdout)
        environ = info.get("info", info).get("environ")
        assert environ["GITHUB_TOKEN"] == REDACTED and environ["DEPLOY_PHRASE"] == REDACTED
        farm.stop()
        stored = b"".join(p.read_bytes() for p in farm.dir.glob("bbx.sqlite*"))
        assert SECRET.encode() not in stored and phrase.encode() not in stored
        assert R in stored
    finally:
        farm.stop()


# -- a real Buildbot 4.3 master gets the same protection ---------------------------------------

ENV_STEP_CFG = r'''
f_env = util.BuildFactory()
f_env.addStep(steps.ShellCommand(name='env', command=sh('echo "token=$GITHUB_TOKEN"'),
                                 env={'GITHUB_TOKEN': H['token']}))
BUILDERS.append(('b-env', f_env))
c['logCompressionMethod'] = 'raw'
'''


def test_a_buildbot_master_never_receives_the_secret(tmp_path, monkeypatch):
    from tests import realmaster

    monkeypatch.setattr(realmaster, "MASTER_CFG", realmaster.MASTER_CFG.replace(
        "c['builders'] =", ENV_STEP_CFG + "\nc['builders'] =").replace(
        "H = json.load(f)", "H = json.load(f)\nH['token'] = open(os.path.join(_here, 'token')).read()"))
    base = tmp_path / "m"
    base.mkdir()
    (base / "token").write_text(SECRET)
    master = realmaster.RealMaster.start(base, worker="w1", password="pw")
    slave = None
    try:
        made = run_bbx("slave", "create", tmp_path / "s", master.address, "w1", "pw")
        assert made.returncode == 0, made.stderr
        slave = Proc([BBX, "slave", "start", tmp_path / "s"], log_path=tmp_path / "slave.out")
        slave.wait_for_output("message from master: attached", 30)
        assert master.trigger("b-env") == "SUCCESS"
    finally:
        if slave is not None:
            slave.terminate()
        master.stop()
    con = sqlite3.connect(base / "state.sqlite")
    try:
        chunks = b"".join(bytes(r[0]) if isinstance(r[0], (bytes, memoryview)) else r[0].encode()
                          for r in con.execute("SELECT content FROM logchunks"))
    finally:
        con.close()
    assert b"token=" + R in chunks
    assert SECRET.encode() not in chunks
