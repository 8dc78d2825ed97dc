"""Render PDF pages in a child process, under a time limit (issue 15 item 16).

mupdf can spend minutes on one hostile page (and ignores Ctrl-C meanwhile). The indexer
therefore never renders in its own process: one `RenderWorker` child (`python -m
colrag.render_worker`) opens documents and renders pages on request, reused for the
whole run; a request that takes longer than the limit gets the child killed (a new one
starts for the next request), and the page is recorded as failed. The child only makes
pixels: embedding (and the page features of Retriever.embed_pages) stays in the parent.

Protocol, over the child's stdin/stdout (no pickles): a request is one JSON line
({"op": "open", "path_hex", "password"} or {"op": "render", "page", "target_pixels",
"max_side"}); a reply is one JSON line, followed for a rendered page by exactly
`nbytes` bytes of RGB pixels. The child ignores SIGINT (the parent decides), and dies
with its parent (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .render import PdfError, RenderedPage, RenderOptions, open_pdf, page_errors, render_page

DEFAULT_RENDER_TIMEOUT = 120.0  # seconds per page (and per document opening); a letter page takes ~0.1 s
STARTUP_TIMEOUT = 120.0  # seconds for the child to import pymupdf and PIL (not counted in a page's time)
NOTE_EVERY = 5.0  # seconds between on_wait calls while a request is pending


class RenderTimeout(Exception):
    """The child did not answer within the limit (it has been killed)."""


class RendererStopped(Exception):
    """The child died while working (e.g. mupdf crashed on the page)."""


class PageRenderError(Exception):
    """mupdf (or PIL) could not render the page; the message says why."""


class RenderWorker:
    """The parent's handle on the render child: `open` a document, `render` its pages.

    Use as a context manager (the child is killed on exit, Ctrl-C included)."""

    def __init__(
        self,
        timeout: float = DEFAULT_RENDER_TIMEOUT,
        command: list[str] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ):
        self.timeout = timeout
        self.command = command or [sys.executable, "-m", "colrag.render_worker"]
        self.on_wait = on_wait  # called every NOTE_EVERY s while a request is pending: (what, seconds waited)
        self._working_on = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._doc: tuple[str, str | None] | None = None  # the document the child has open
        self._buffer = b""

    # -- the child -----------------------------------------------------------------------
    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])  # the child imports this colrag
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0, close_fds=True
        )
        self._doc, self._buffer = None, b""
        try:  # the child's imports are not the page's time (nor a page still rendering): wait for it to be ready
            ready = json.loads(
                self._read_line(proc, time.monotonic() + max(STARTUP_TIMEOUT, self.timeout), notes=False)
            )
        except RenderTimeout:
            self.close()
            raise RendererStopped("the renderer did not start") from None
        except BaseException:
            self.close()
            raise
        if not ready.get("ready"):
            self.close()
            raise RendererStopped(f"the renderer did not start ({ready})")
        return proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        self._doc = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # a killed process that does not go away
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> RenderWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for the indexer: a file's failure or a page's reason --------------------------------
    def page_count(self, path: str | os.PathLike[str], password: str | None = None) -> int:
        """`open`, with a timeout or a crash of the child as PdfError (the whole file fails)."""
        self._working_on = f"{Path(path).name} (opening)"
        try:
            return self.open(path, password)
        except RenderTimeout:
            raise PdfError(f"opening took longer than {self.timeout:g} s") from None
        except RendererStopped as exc:
            raise PdfError(f"cannot open: {exc}") from None

    def try_render(
        self, path: str | os.PathLike[str], index: int, opts: RenderOptions, password: str | None = None
    ) -> RenderedPage | str:
        """The page, or why it could not be rendered (PdfError when the file itself cannot be opened)."""
        try:
            if self._doc != (os.fsencode(path).hex(), password):
                self.page_count(path, password)
            self._working_on = f"{Path(path).name} page {index + 1}"
            return self.render(path, index, opts, password)
        except PageRenderError as exc:  # mupdf's or PIL's complaint about this page
            return str(exc)
        except RenderTimeout:
            return f"rendering took longer than {self.timeout:g} s"
        except RendererStopped as exc:  # mupdf crashed on it
            return f"cannot render: {exc}"

    # -- requests ------------------------------------------------------------------------
    def open(self, path: str | os.PathLike[str], password: str | None = None) -> int:
        """Open a document in the child; returns its page count (PdfError when it cannot be used)."""
        key = (os.fsencode(path).hex(), password)
        reply = self._ask({"op": "open", "path_hex": key[0], "password": password})
        if "error" in reply:
            self._doc = None
            raise PdfError(reply["error"])
        self._doc = key
        return int(reply["pages"])

    def render(
        self, path: str | os.PathLike[str], index: int, opts: RenderOptions, password: str | None = None
    ) -> RenderedPage:
        """Render page `index` (0-based) of `path`, opening it first if the child has not."""
        if self._doc != (os.fsencode(path).hex(), password):
            self.open(path, password)
        request = {"op": "render", "page": index, "target_pixels": opts.target_pixels, "max_side": opts.max_side}
        reply = self._ask(request)
        if "error" in reply:
            raise PageRenderError(reply["error"])
        from PIL import Image

        image = Image.frombytes("RGB", (int(reply["width"]), int(reply["height"])), reply["pixels"])
        return RenderedPage(number=index + 1, image=image, warnings=str(reply.get("warnings", "")))

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
        except OSError:  # BrokenPipeError: it died since the last request
            self.close()
            raise RendererStopped("the renderer stopped") from None
        deadline = time.monotonic() + self.timeout
        try:
            header: dict[str, Any] = json.loads(self._read_line(proc, deadline))
            if "bug" in header:  # a programming error in the child: not the PDF's fault
                raise RuntimeError(f"render worker failed:\n{header['bug']}")
            if header.get("nbytes"):
                header["pixels"] = self._read_exactly(proc, int(header["nbytes"]), deadline)
        except BaseException:  # timeout, Ctrl-C, a reply cut short: the child's state is unknown, kill it
            self.close()
            raise
        return header

    def _wait_readable(self, proc: subprocess.Popen[bytes], deadline: float, notes: bool = True) -> None:
        assert proc.stdout is not None
        started = time.monotonic()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RenderTimeout(f"rendering took longer than {self.timeout:g} s")
                if sel.select(min(left, NOTE_EVERY)):
                    return
                if notes and self.on_wait is not None:
                    self.on_wait(self._working_on, time.monotonic() - started)

    def _read_some(self, proc: subprocess.Popen[bytes], deadline: float, notes: bool = True) -> bytes:
        assert proc.stdout is not None
        self._wait_readable(proc, deadline, notes)
        data = os.read(proc.stdout.fileno(), 1 << 20)
        if not data:
            code = proc.wait()
            why = f"signal {-code}" if code < 0 else f"exit status {code}"
            self.close()
            raise RendererStopped(f"the renderer stopped ({why})")
        return data

    def _read_line(self, proc: subprocess.Popen[bytes], deadline: float, notes: bool = True) -> bytes:
        while b"\n" not in self._buffer:
            self._buffer += self._read_some(proc, deadline, notes)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _read_exactly(self, proc: subprocess.Popen[bytes], n: int, deadline: float) -> bytes:
        chunks, have = [self._buffer[:n]], min(len(self._buffer), n)
        self._buffer = self._buffer[n:]
        while have < n:
            data = self._read_some(proc, deadline)
            take = data[: n - have]
            chunks.append(take)
            have += len(take)
            self._buffer = data[len(take) :]
        return b"".join(chunks)


# -- the child ---------------------------------------------------------------------------------


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _reply(out: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    out.write(json.dumps({**header, "nbytes": len(payload)}).encode() + b"\n")  # ASCII: surrogates escaped
    if payload:
        out.write(payload)
    out.flush()


def serve(stdin: BinaryIO, stdout: BinaryIO, render: Callable[..., RenderedPage] = render_page) -> None:
    """Answer requests until stdin closes."""
    errors: tuple[type[BaseException], ...] = (
        *page_errors(),
        MemoryError,
    )  # a page too big for this process fails; the parent goes on
    _reply(stdout, {"ready": True})
    doc = None
    for line in stdin:
        request = json.loads(line)
        try:
            if request["op"] == "open":
                if doc is not None:
                    doc.close()
                    doc = None
                try:
                    doc = open_pdf(os.fsdecode(bytes.fromhex(request["path_hex"])), request.get("password"))
                except PdfError as exc:
                    _reply(stdout, {"error": str(exc)})
                    continue
                _reply(stdout, {"pages": doc.page_count})
            elif request["op"] == "render":
                if doc is None:
                    raise RuntimeError("render before open")
                opts = RenderOptions(int(request["target_pixels"]), int(request["max_side"]))
                try:
                    page = render(doc, int(request["page"]), opts)
                except errors as exc:
                    _reply(stdout, {"error": f"cannot render: {type(exc).__name__}: {exc}"})
                    continue
                image: Any = page.image
                header = {"width": image.width, "height": image.height, "warnings": page.warnings}
                _reply(stdout, header, image.tobytes())
            else:
                raise RuntimeError(f"unknown request {request['op']!r}")
        except Exception:  # a bug: reported to the parent, which raises it (never a page failure)
            _reply(stdout, {"bug": traceback.format_exc()})


def main(render: Callable[..., RenderedPage] = render_page) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed on stdout (a library's message) goes to stderr, not into a reply
    serve(sys.stdin.buffer, replies, render)


if __name__ == "__main__":
    main()
