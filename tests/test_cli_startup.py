"""The CLI starts fast: parsing and --help import neither Twisted nor the roles."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_loads_no_twisted_and_no_role():
    probe = ("import sys, bbx.cli; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted' "
             "or m.startswith(('bbx.master', 'bbx.slave'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
