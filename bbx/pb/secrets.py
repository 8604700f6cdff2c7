"""Which environment variables hold secrets: one rule for the slave's headers and the CLI.

The slave masks them in the " environment:" header it sends; the CLI masks them again in
`bbx info` and in headers from peers that log their environment in clear (a real
buildbot-worker does). Both must agree on what looks secret, so the rule lives here.
Pure Python: the CLI imports it without loading Twisted.
"""

from __future__ import annotations

import re

# Matched anywhere in the name, ignoring case (e.g. GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY,
# DB_PASSWORD).
SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
_SECRET_NAME = re.compile("|".join(SECRET_NAME_PARTS), re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """True when an environment variable called `name` probably holds a secret."""
    return bool(_SECRET_NAME.search(name))


# What the master stores instead of a secret-looking value in a command's header.
MASK = "<redacted>"

# An environment line of a command's header, as slaves and Buildbot workers write it:
# "  NAME=value" (buildbot_worker/runprocess.py lists the environment that way).
_HEADER_ENV_LINE = re.compile(r"^([ \t]+)([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.MULTILINE)


def mask_header(text: str, mask: str = MASK) -> str:
    """`text` (header lines) with the value of every secret-looking "  NAME=value" line
    replaced by `mask`; everything else is left as it was."""
    if "=" not in text:
        return text
    return _HEADER_ENV_LINE.sub(
        lambda m: f"{m[1]}{m[2]}={mask}" if is_secret_name(m[2]) else m[0], text)
