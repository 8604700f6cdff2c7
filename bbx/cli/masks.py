"""Secret-looking values masked before the operator sees them (bbx/pb/secrets.py decides
which names look secret). No rich here: the pipe path of `bbx run` uses it."""

from __future__ import annotations

import re
from typing import Any

from bbx.pb.secrets import is_secret_name

# What the operator sees instead of a secret-looking value (bbx/pb/secrets.py decides which).
MASK = "********"


def mask_environ(environ: dict[str, Any] | None, show: bool) -> dict[str, Any]:
    """A copy of `environ` with secret-looking values replaced by MASK unless `show`."""
    environ = dict(environ or {})
    if show:
        return environ
    return {name: (MASK if is_secret_name(str(name)) else value) for name, value in environ.items()}


# An environment line in a command's header, as the slave logs it: "  NAME=value".
_HEADER_ENV_LINE = re.compile(r"^([ \t]+)([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.MULTILINE)


def mask_header(text: str, show: bool) -> str:
    """A command header with the values of secret-looking "  NAME=value" lines masked."""
    if show or "=" not in text:
        return text
    return _HEADER_ENV_LINE.sub(
        lambda m: f"{m[1]}{m[2]}={MASK}" if is_secret_name(m[2]) else m[0], text)


def masked_info(answer: dict, show_secrets: bool) -> dict:
    """The master's `info` answer with info.environ masked (for tables and --json alike)."""
    answer = dict(answer)
    info = dict(answer.get("info") or {})
    if "environ" in info:
        info["environ"] = mask_environ(info["environ"], show_secrets)
    answer["info"] = info
    return answer
