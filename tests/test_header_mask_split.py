"""A secret in a header split across two updates is still masked before it is stored."""

from __future__ import annotations

from bbx.master.command import HEADER_TAIL_LIMIT, StoreLog


class _Store:
    def __init__(self):
        self.rows = []

    def append_log(self, step_id, stream, text):
        self.rows.append((stream, text))


def stored(store) -> str:
    return "".join(text for stream, text in store.rows if stream == "header")


def test_a_secret_cut_between_its_name_and_its_value_is_masked():
    store = _Store()
    log = StoreLog(store, 1)
    log.append("header", " environment:\n  HOME=/root\n  GITHUB_TO")
    log.append("header", "KEN=secret123\n  PATH=/bin\n")
    log.flush()
    text = stored(store)
    assert "secret123" not in text
    assert "  GITHUB_TOKEN=<redacted>\n" in text and "  HOME=/root\n" in text
    assert text == " environment:\n  HOME=/root\n  GITHUB_TOKEN=<redacted>\n  PATH=/bin\n"


def test_an_unfinished_last_line_is_stored_masked_when_the_command_ends():
    store = _Store()
    log = StoreLog(store, 1)
    log.append("header", "  API_SECRET=abc")
    assert stored(store) == ""
    log.flush()
    assert stored(store) == "  API_SECRET=<redacted>"


def test_a_header_without_newlines_is_not_held_without_bound():
    store = _Store()
    log = StoreLog(store, 1)
    log.append("header", "x" * (HEADER_TAIL_LIMIT + 1))
    assert len(stored(store)) == HEADER_TAIL_LIMIT + 1
