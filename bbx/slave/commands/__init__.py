"""The commands a slave runs for its master, under Buildbot's names (docs/protocol.md §5.4).

NAMES and ALIASES are plain data so that the slave's config checking (bbx/slave/basedir.py)
can name them without importing Twisted; registry.py maps them to classes (and a test checks
the two agree).
"""

NAMES = ("shell", "mkdir", "rmdir", "cpdir", "stat", "glob", "listdir", "rmfile",
         "uploadFile", "uploadDirectory", "downloadFile")

# Buildbot's snake_case spellings, served as the same command.
ALIASES = {
    "upload_file": "uploadFile",
    "upload_directory": "uploadDirectory",
    "download_file": "downloadFile",
}


def canonical(name: str) -> str:
    """The command an alias stands for ('upload_file' -> 'uploadFile'); other names as given."""
    return ALIASES.get(name, name)


def check_allowed(names) -> tuple[str, ...]:
    """An allow-list as given (names or aliases) -> sorted canonical names; ValueError names the
    unknown ones and lists the known."""
    wanted = []
    unknown = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        if canonical(name) in NAMES:
            wanted.append(canonical(name))
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown command(s) {', '.join(repr(u) for u in unknown)}; "
                         f"the commands are: {', '.join(NAMES)}")
    if not wanted:
        raise ValueError(f"no command given; list some of: {', '.join(NAMES)} (or 'all')")
    return tuple(sorted(set(wanted)))
