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
