"""The index progress line: plurals, s/page at model speed, no "done" after an interruption."""

from __future__ import annotations

import io

import pytest

from colrag.cli import progress
from colrag.cli.progress import ProgressLine, loading, plural, speed


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_plural():
    assert [plural(n, "page") for n in (0, 1, 2)] == ["0 pages", "1 page", "2 pages"]
    assert plural(1, "query", "queries") == "1 query" and plural(3, "query", "queries") == "3 queries"


def test_speed_reads_in_seconds_per_page_at_model_speed():
    assert speed(30, 900.0) == "30.0 s/page"  # a CPU with the real models: 0.03 pages/s would say nothing
    assert speed(10, 5.0) == "120 pages/min"
    assert speed(0, 5.0) == "-"


def test_progress_on_a_terminal(clock):
    out = Terminal()
    p = ProgressLine(out)
    p.start(3, 1)
    for i in range(3):
        clock[0] += 31.0
        p.advance(1, f"a.pdf p.{i + 1}")
    p.finish()
    text = out.getvalue()
    assert text.startswith("\r\x1b[Kindexing 3 pages from 1 file\n")
    assert "31.0 s/page" in text and text.rstrip("\n").endswith("done")


def test_no_done_after_an_interruption(clock):
    out = Terminal()
    p = ProgressLine(out)
    p.start(5, 2)
    clock[0] += 40.0
    p.advance(1, "a.pdf p.1")
    p.finish()  # what the indexer's finally does when Ctrl-C stops it
    text = out.getvalue()
    assert "done" not in text and text.endswith("\n")
    assert "1/5 pages (20%)  40.0 s/page  eta 2m40s  a.pdf p.1" in text


def test_a_log_file_gets_plain_lines(clock):
    out = io.StringIO()
    p = ProgressLine(out)
    p.start(1, 1)
    clock[0] += 2.0
    p.advance(1, "a.pdf p.1")
    p.finish()
    assert out.getvalue().splitlines() == [
        "indexing 1 page from 1 file",
        "1/1 pages (100%)  2.0 s/page  eta 0s  a.pdf p.1",
    ]


def test_loading_note_on_a_terminal_only():
    term = Terminal()
    with loading("the retriever", term):
        assert term.getvalue() == "loading the retriever…"
    assert term.getvalue().endswith("\r\x1b[K")  # erased once loaded
    log = io.StringIO()
    with loading("the retriever", log):
        pass
    assert log.getvalue() == ""  # a pipe or log keeps errors one line
