"""End-to-end indexing throughput: `colrag index` on the first pages of a real PDF.

    python bench/bench_index.py --bundle ~/.cache/colrag-bench/bundles/retriever-int8 [--pages 4]

Runs the real CLI in a fresh process (render + embed + store, cold start included) and
reports pages/minute and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import PDF_DIR, backend_args, machine, parse_bundle_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--bundle",
        action="append",
        required=True,
        help="retriever bundle, DIR or NAME=DIR, or NAME@BACKEND[/PRECISION]=DIR to index on that backend (repeatable)",
    )
    ap.add_argument("--pdf", default=str(PDF_DIR / "01_chart_paper_tracemonkey.pdf"))
    ap.add_argument("--pages", type=int, default=4)
    args = ap.parse_args()
    import pymupdf as fitz  # the `fitz` name is deprecated

    print(f"machine: {machine()}")
    print(f"input: first {args.pages} pages of {Path(args.pdf).name}\n")
    print("| variant | pages | wall (s) | pages/minute | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for spec in args.bundle:
        name, bundle, backend, precision = parse_bundle_spec(spec)
        with tempfile.TemporaryDirectory() as tmp:
            docs = Path(tmp) / "docs"
            docs.mkdir()
            with fitz.open(args.pdf) as src, fitz.open() as dst:
                dst.insert_pdf(src, from_page=0, to_page=args.pages - 1)
                dst.save(docs / "doc.pdf")
            start = time.perf_counter()
            with open(Path(tmp) / "stderr", "w+") as err:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "colrag",
                        "index",
                        str(docs),
                        "--index",
                        str(Path(tmp) / "index"),
                        "--retriever",
                        bundle,
                        *backend_args(backend, precision),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env={**os.environ, "COLRAG_HOME": str(Path(tmp) / "home")},  # cold: compiles included
                )
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
                proc.returncode = os.waitstatus_to_exitcode(status)
                wall = time.perf_counter() - start
                err.seek(0)
                messages = err.read()
            if proc.returncode != 0:
                print(f"| {name or bundle} | failed: {messages.strip().splitlines()[-1:]} | | | |")
                continue
            peak_note = f"{usage.ru_maxrss / 1e6:.1f}"
            print(
                f"| {name or 'colrag'} | {args.pages} | {wall:.1f} | {args.pages / wall * 60:.2f} | {peak_note} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
