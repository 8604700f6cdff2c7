"""Where the store lives: the `db` setting of master.toml, parsed.

    db = "bbx.sqlite"                                   a SQLite file (relative: to the master's dir)
    db = "sqlite:history/bbx.sqlite"                    the same, said explicitly
    db = "postgresql://bbx:secret@db.example.org:5432/bbx"
    db = "postgresql:///bbx?host=/run/postgresql"       a unix socket directory

Kept free of any database module: parsing a SQLite location must never import psycopg.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE, POSTGRESQL = "sqlite", "postgresql"
_PG_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class StoreLocation:
    """A parsed `db` setting: `engine` is 'sqlite' (with `path`) or 'postgresql' (with `url`)."""

    engine: str
    path: Path | None = None
    url: str | None = None

    @property
    def shared(self) -> bool:
        """Whether several masters may use this store at once (PostgreSQL)."""
        return self.engine == POSTGRESQL

    def display(self) -> str:
        """What log lines and messages name: the path, or the URL without its password."""
        if self.engine == SQLITE:
            return str(self.path)
        return redact(self.url or "")


def redact(url: str) -> str:
    """A URL with any password replaced by '***'."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse(text: str | os.PathLike, basedir: str | os.PathLike | None = None) -> StoreLocation:
    """A `db` value -> StoreLocation. A relative SQLite path is taken from `basedir` (default:
    the current directory). ValueError, saying what to write, for anything else."""
    if isinstance(text, StoreLocation):
        return text
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("is empty; write a file name like \"bbx.sqlite\" or a URL like "
                         "\"postgresql://user@host/dbname\"")
    base = Path(basedir) if basedir is not None else Path.cwd()
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else None
    # A one-letter "scheme" is a Windows drive, and a path may well contain a colon.
    if scheme is None or len(scheme) == 1:
        return StoreLocation(SQLITE, path=(base / text).absolute())
    if scheme == SQLITE:
        rest = text[len(scheme) + 1:]
        if rest.startswith("//"):
            rest = rest[2:]  # sqlite:///abs/path and sqlite://rel, as SQLAlchemy spells them
        if not rest:
            raise ValueError("names no file; write e.g. \"sqlite:bbx.sqlite\"")
        return StoreLocation(SQLITE, path=(base / rest).absolute())
    if scheme in _PG_SCHEMES:
        parts = urlsplit(text)
        if not parts.path.strip("/"):
            raise ValueError(f"{redact(text)!r} names no database; write e.g. "
                             "\"postgresql://user@host/dbname\"")
        return StoreLocation(POSTGRESQL, url=text)
    raise ValueError(f"has the unknown scheme {scheme!r}; write a SQLite file name "
                     "(\"bbx.sqlite\", \"sqlite:PATH\") or a PostgreSQL URL "
                     "(\"postgresql://user@host/dbname\")")
