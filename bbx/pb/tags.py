"""What a slave tag looks like, and the bounds on tags a slave offers about itself.

Both roles use one rule: the master for `tags = [...]` in master.toml and for the tags a slave
sends in its info dict at attach (docs/protocol.md §3.1, key "tags"), the slave for
`bbx slave create --tag`. A tag is a short printable word such as "linux", "x86_64" or
"gpu=a100": no white space (a real buildbot-worker's info/tags file is split on it) and no
comma (the other separator such a file may use).
"""

from __future__ import annotations

import re

# The longest tag and the most tags a slave may offer: a tag names a property of a machine,
# and 32 of them is already more than any GitLab runner or Buildkite agent we have seen uses.
# They bound what an unknown peer can make the master keep per slave (64 x 32 bytes).
MAX_TAG_LENGTH = 64
MAX_TAGS = 32

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/@-]*")
# What a buildbot-worker's info/tags file (or an older bbx) may separate tags with.
_SEPARATORS = re.compile(r"[\s,]+")


def tag_problem(tag) -> str | None:
    """Why `tag` cannot be a tag (a few words), or None when it can."""
    if not isinstance(tag, str) or not tag:
        return "is empty" if tag == "" else f"{tag!r} is not a string"
    if len(tag) > MAX_TAG_LENGTH:
        return f"{tag[:20]!r}... is longer than {MAX_TAG_LENGTH} characters"
    if not _TAG.fullmatch(tag):
        return (f"{tag!r} is not a tag: use letters, digits and . _ : = + / @ - "
                "(starting with a letter or digit)")
    return None


def check_tags(tags) -> tuple[str, ...]:
    """Validated, de-duplicated tags in their given order; ValueError names the first bad one."""
    out: list[str] = []
    for tag in tags:
        problem = tag_problem(tag)
        if problem is not None:
            raise ValueError(problem)
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise ValueError(f"{len(out)} tags are more than the {MAX_TAGS} a slave may have")
    return tuple(out)


def offered_tags(value) -> tuple[tuple[str, ...], list[str]]:
    """The tags in a slave's info value `value` (a list of str, or a str of words separated by
    white space or commas, as a buildbot-worker's info/tags file holds), and the problems
    found. Bad tags are dropped, and tags past MAX_TAGS are ignored: a peer's input is
    bounded and never fatal to its attach."""
    if value is None:
        return (), []
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if len(value) > MAX_TAGS * (MAX_TAG_LENGTH + 1):
            return (), [f"its tags are {len(value)} characters long; ignored"]
        items = [t for t in _SEPARATORS.split(value) if t]
    elif isinstance(value, (list, tuple)):
        items = list(value[:MAX_TAGS * 2])
    else:
        return (), [f"its tags are a {type(value).__name__}, not a list; ignored"]
    tags: list[str] = []
    problems: list[str] = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        problem = tag_problem(item)
        if problem is not None:
            problems.append(f"ignored a tag: {problem}")
            continue
        if item in tags:
            continue
        if len(tags) == MAX_TAGS:
            problems.append(f"it offers more than {MAX_TAGS} tags; the rest are ignored")
            break
        tags.append(item)
    return tuple(tags), problems
