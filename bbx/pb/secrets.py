"""Which environment variables hold secrets: one rule for the slave and the CLI.

The slave hides them before anything leaves its host: their values in the `environ` it
reports and in " environment:" headers, and their values wherever they appear in command
output (bbx/slave/redact.py). The master masks headers before it stores them (`mask_header`),
for peers that do not. The CLI masks them again in `bbx info` and in headers from peers
that log their environment in clear (a real buildbot-worker does). Both must agree on what
looks secret, so the rule lives here. Pure Python: the CLI imports it without loading Twisted.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

# Matched anywhere in the name, ignoring case (e.g. GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY,
# DB_PASSWORD).
SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
_SECRET_NAME = re.compile("|".join(SECRET_NAME_PARTS), re.IGNORECASE)

# What the slave sends instead of a secret value, in headers, info and output alike.
REDACTED = "<redacted>"

# Values shorter than this are not searched for in output: replacing every "ab" or "42" would
# wreck the output and protect nothing (a secret that short can be guessed anyway).
MIN_SECRET_LENGTH = 4

# Values that are flags, not secrets (USE_KEYRING=true): replacing every "true" in a build log
# would hide nothing and wreck the log. Compared ignoring case.
NOT_SECRET_VALUES = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null", "unset"})


def is_secret_name(name: str) -> bool:
    """True when an environment variable called `name` probably holds a secret."""
    return bool(_SECRET_NAME.search(name))


def check_glob(glob: str) -> str:
    """`glob` if it is a usable name pattern (NAME, DEPLOY_*, *_CERT); ValueError otherwise."""
    if not isinstance(glob, str) or not glob.strip():
        raise ValueError(f"{glob!r} is not a name pattern; give e.g. DEPLOY_* or MY_VAR")
    if any(c.isspace() or c in "=\0" for c in glob):
        raise ValueError(f"{glob!r} cannot match an environment variable name "
                         "(no spaces or '='); give e.g. DEPLOY_* or MY_VAR")
    return glob


# Names the built-in rule matches whose values say where a secret is, not what it is
# (SSL_KEY_FILE=/etc/ssl/x.key): masked like the others, but their values are not searched for
# in output, where every mention of the path would become REDACTED.
LOCATION_SUFFIXES = ("_FILE", "_FILES", "_PATH", "_DIR")


@dataclass(frozen=True)
class SecretNames:
    """The built-in rule plus the slave's own `--redact` globs (shell patterns, any case)."""

    globs: tuple[str, ...] = ()

    def _globbed(self, name: str) -> bool:
        upper = name.upper()
        return any(fnmatch.fnmatchcase(upper, glob.upper()) for glob in self.globs)

    def __contains__(self, name: str) -> bool:
        return is_secret_name(name) or self._globbed(name)

    def value_is_secret(self, name: str) -> bool:
        """Whether the value of `name` is to be replaced wherever it appears in output."""
        if self._globbed(name):
            return True
        return is_secret_name(name) and not name.upper().endswith(LOCATION_SUFFIXES)


def worth_redacting(value: str) -> bool:
    """Whether a secret's value is long and specific enough to be replaced in output."""
    stripped = value.strip()
    return len(stripped) >= MIN_SECRET_LENGTH and stripped.lower() not in NOT_SECRET_VALUES


# An environment line of a command's header, as slaves and Buildbot workers write it:
# "  NAME=value" (buildbot_worker/runprocess.py lists the environment that way).
_HEADER_ENV_LINE = re.compile(r"^([ \t]+)([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.MULTILINE)


def mask_header(text: str, mask: str = REDACTED) -> str:
    """`text` (header lines) with the value of every secret-looking "  NAME=value" line
    replaced by `mask`; everything else is left as it was. The master applies it before a
    header reaches the store, for peers that send their environment in clear."""
    if "=" not in text:
        return text
    return _HEADER_ENV_LINE.sub(
        lambda m: f"{m[1]}{m[2]}={mask}" if is_secret_name(m[2]) else m[0], text)
