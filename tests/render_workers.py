"""Render children for the indexer tests: `python -m tests.render_workers MODE`.

    hang:N   page N (1-based) of any file whose name contains "slow" never finishes rendering
    crash:N  page N of any file whose name contains "slow" kills the child (as a mupdf crash or the OOM killer)
    warn     every page's mupdf warnings hold a font name that is not valid UTF-8
    bug      rendering raises a programming error (KeyError)

The child writes its pid to $COLRAG_TEST_WORKER_PIDS (one line per child started)."""

from __future__ import annotations

import os
import signal
import sys
import time

from colrag import render_worker
from colrag.render import RenderedPage, RenderOptions, render_page


def main(mode: str) -> None:
    pids = os.environ.get("COLRAG_TEST_WORKER_PIDS")
    if pids:
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")

    def render(doc, index: int, opts: RenderOptions) -> RenderedPage:
        if mode.startswith("hang:") and "slow" in doc.name and index + 1 == int(mode.split(":")[1]):
            while True:  # like mupdf on a hostile page: busy, deaf to everything but SIGKILL
                time.sleep(0.05)
        if mode.startswith("crash:") and "slow" in doc.name and index + 1 == int(mode.split(":")[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "bug":
            raise KeyError("a bug in the renderer")
        page = render_page(doc, index, opts)
        if mode == "warn":
            page.warnings = "unknown font 'Times\udcff\udcfeRoman'"
        return page

    render_worker.main(render)


if __name__ == "__main__":
    main(sys.argv[1])
