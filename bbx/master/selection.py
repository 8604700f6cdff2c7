"""Which slaves a builder may use: the `slaves` key of a [[builders]] block, and the rule.

A builder names its slaves, selects them by tags, or both:

    slaves = ["a", "b"]                                   # these slaves
    slaves = { tags = ["linux", "docker"] }               # any slave with all these tags
    slaves = { names = ["a"], tags = ["linux", "docker"] }  # "a", and any slave with them all

With both, the named slaves are always allowed and the tags add the others (a union): naming a
slave is how an operator says "this one too", whatever its tags. A slave's tags are the
`tags` of its [[slaves]] block together with the tags it offers itself at attach (bbx slave
create --tag; docs/protocol.md §3.1): the union, so that a new machine needs no master edit
beyond its credentials, and a tag written in master.toml cannot be taken away by the slave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from bbx.pb.tags import check_tags

if TYPE_CHECKING:  # pragma: no cover
    from .config import BuilderConfig, MasterConfig
    from .tomlcheck import Loader

# Slave names a description lists before "and N more".
NAMES_IN_MESSAGE = 10
_SHAPES = ('write slaves = ["a", "b"], slaves = { tags = ["linux"] } or '
           'slaves = { names = ["a"], tags = ["linux"] }')


def load_tags(ld: "Loader", table: dict, header: str, index: int, label: str) -> tuple[str, ...]:
    """The `tags` of a [[slaves]] block (or of a builder's selection), validated."""
    if "tags" not in table:
        return ()
    tags = table["tags"]
    line = ld.where.line(header, "tags", index)
    if not isinstance(tags, list):
        raise ld.fail(line, label, "must be a list of tags", 'write tags = ["linux", "x86_64"]')
    try:
        return check_tags(tags)
    except ValueError as e:
        raise ld.fail(line, label, str(e), 'write tags = ["linux", "x86_64"]') from None


def load_selection(ld: "Loader", item: dict, header: str, index: int, label: str,
                   known: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A builder's `slaves` value as (names, tags); ConfigError with file:line otherwise."""
    if not isinstance(known, (set, frozenset)):
        known = set(known)  # callers loading many builders pass one set for all of them
    value: Any = item.get("slaves")
    line = ld.where.line(header, "slaves", index)
    key = f"{label}.slaves"
    if isinstance(value, dict):
        extra = sorted(set(value) - {"names", "tags"})
        if extra:
            raise ld.fail(line, key, f"has an unknown key {extra[0]!r}", _SHAPES)
        names = value.get("names", [])
        try:
            tags = check_tags(value.get("tags", [])) if isinstance(value.get("tags", []), list) \
                else None
        except ValueError as e:
            raise ld.fail(line, f"{key}.tags", str(e), 'write tags = ["linux", "docker"]') from None
        if tags is None:
            raise ld.fail(line, f"{key}.tags", "must be a list of tags",
                          'write tags = ["linux", "docker"]')
        if not names and not tags:
            raise ld.fail(line, key, "selects no slave (no names and no tags)", _SHAPES)
    elif isinstance(value, list):
        names, tags = value, ()
        if not names:
            raise ld.fail(line, key, "must be a non-empty list of slave names", _SHAPES)
    else:
        raise ld.fail(line, key, "must be a list of slave names or a table of names and tags",
                      _SHAPES)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ld.fail(line, key, "names must be a list of slave names", _SHAPES)
    for name in names:
        if name not in known:
            choices = ", ".join(sorted(known)) or "none configured"
            raise ld.fail(line, key, f"slave {name!r} is not configured",
                          f"add a [[slaves]] block for it or use one of: {choices}")
    if len(set(names)) != len(names):
        raise ld.fail(line, key, "lists a slave twice", "list each slave once")
    return tuple(names), tuple(tags)


def serves(builder: "BuilderConfig", slave: str, tags: Iterable[str]) -> bool:
    """May `slave`, with these effective tags, run `builder`?"""
    if slave in builder.slave_set:
        return True
    if not builder.tags:
        return False
    if not isinstance(tags, (set, frozenset)):
        tags = frozenset(tags)
    return all(tag in tags for tag in builder.tags)


def builders_for(builders: dict, slave: str, tags: Iterable[str]) -> dict:
    """The builders (name -> Builder, in configured order) that `slave` may run."""
    tags = frozenset(tags)
    return {name: b for name, b in builders.items() if serves(b.config, slave, tags)}


class BuilderIndex:
    """`builders_for` for many slaves at once (master start, reconfig): the builders indexed
    by the slave names they list and by their rarest tag, so S slaves and B builders cost
    about S + B checks instead of S x B (10,000 x 10,000 took ~25 s, blocking the reactor).
    Build it again whenever `builders` changes."""

    def __init__(self, builders: dict):
        self.builders = builders
        self._order = {name: i for i, name in enumerate(builders)}
        self._by_slave: dict[str, list[str]] = {}
        self._by_tag: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for b in builders.values():
            for tag in b.config.tags:
                counts[tag] = counts.get(tag, 0) + 1
        for name, b in builders.items():
            for slave in b.config.slave_set:
                self._by_slave.setdefault(slave, []).append(name)
            if b.config.tags:
                # A slave must have every tag, so the rarest one is enough to find it by.
                rarest = min(b.config.tags, key=counts.__getitem__)
                self._by_tag.setdefault(rarest, []).append(name)

    def for_slave(self, slave: str, tags: Iterable[str]) -> dict:
        """What builders_for(builders, slave, tags) returns, in configured order."""
        tags = frozenset(tags)
        picked = set(self._by_slave.get(slave, ()))
        for tag in tags:
            for name in self._by_tag.get(tag, ()):
                if name not in picked and all(t in tags for t in self.builders[name].config.tags):
                    picked.add(name)
        return {name: self.builders[name] for name in sorted(picked, key=self._order.__getitem__)}


def describe(builder: "BuilderConfig") -> str:
    """A builder's selection in a few words: "a, b", "tags linux+docker", or both."""
    parts = []
    if builder.slaves:
        names = builder.slaves
        shown = ", ".join(names[:NAMES_IN_MESSAGE])
        if len(names) > NAMES_IN_MESSAGE:
            shown += f" and {len(names) - NAMES_IN_MESSAGE} more"  # a builder may have thousands
        parts.append(shown)
    if builder.tags:
        parts.append("tags " + "+".join(builder.tags))
    return " or ".join(parts)


def unserved(config: "MasterConfig") -> list[str]:
    """checkconfig's warnings: one line per builder no configured slave can serve by the
    tags master.toml gives it (a slave offering its own tags at attach still might)."""
    lines = []
    for builder in config.builders:
        if any(serves(builder, s.name, s.tags) for s in config.slaves):
            continue
        lines.append(f"builder {builder.name!r} needs tags {', '.join(builder.tags)} and no "
                     f"[[slaves]] block has them all; only a slave offering them itself at "
                     f"attach (bbx slave create --tag) can run it")
    return lines
