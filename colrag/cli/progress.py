"""Progress of `colrag index` on stderr, and the plural/duration helpers the CLI prints with."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from .output import printable


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 page`, `2 pages`, `0 pages` (irregular plurals: pass `many`)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def speed(pages: int, seconds: float) -> str:
    """Seconds per page at model speed (tens of seconds on a CPU), pages per minute when faster than 1 s/page."""
    if pages <= 0:
        return "-"
    per_page = seconds / pages
    if per_page >= 1.0:
        return f"{per_page:.1f} s/page"
    return f"{60.0 / max(per_page, 1e-9):.0f} pages/min"


@contextmanager
def loading(what: str, stream: TextIO | None = None) -> Iterator[None]:
    """'loading the retriever…' on a terminal while models load (seconds, tens on a cold disk),
    erased when done. Not written to a pipe or a log: scripts keep one-line errors."""
    out = stream or sys.stderr
    tty = out.isatty()
    if tty:
        out.write(f"loading {what}…")
        out.flush()
    try:
        yield
    finally:
        if tty:
            out.write("\r\x1b[K")
            out.flush()


class ProgressLine:
    """Pages done/total, speed and ETA on stderr.

    On a terminal it redraws one line; otherwise it prints a line at most every 10 s. The
    last line says "done" only when every page was processed (not after Ctrl-C)."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.total = self.done = 0
        self.t0 = self.last = 0.0
        self._open = False  # a redrawn line is on screen without its newline

    def start(self, total_pages: int, files: int) -> None:
        self.total, self.done = total_pages, 0
        self.t0 = self.last = time.monotonic()
        if total_pages:
            self._write(f"indexing {plural(total_pages, 'page')} from {plural(files, 'file')}", final=True)

    def advance(self, pages: int, label: str) -> None:
        self.done += pages
        now = time.monotonic()
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            self._write(self._line(now, label), final=not self.tty)

    def note(self, text: str) -> None:
        """A line about the work in progress (a page that takes long to render), at most every 10 s."""
        now = time.monotonic()
        if now - self.last >= 10.0:
            self.last = now
            self._write(printable(text), final=True)

    def finish(self) -> None:
        if not self.total:
            return
        if self.done >= self.total:
            if self.tty:
                self._write(self._line(time.monotonic(), "done"), final=True)
        elif self._open:  # stopped early (Ctrl-C, an error): end the line, claim nothing
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def _line(self, now: float, label: str) -> str:
        elapsed = max(now - self.t0, 1e-9)
        eta = (self.total - self.done) * elapsed / self.done if self.done else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        done = f"{self.done}/{self.total} pages ({pct:.0f}%)"
        return f"{done}  {speed(self.done, elapsed)}  eta {duration(eta)}  {printable(label)}"

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            self._open = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
