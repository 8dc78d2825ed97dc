"""End-to-end indexing throughput: `colrag index` on the first pages of a real PDF.

    python bench/bench_index.py --bundle ~/.cache/colrag-bench/bundles/retriever-int8 [--pages 4]

Runs the real CLI in a fresh process (render + embed + store, cold start included) and
reports pages/minute and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import PDF_DIR, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, help="retriever bundle, DIR or NAME=DIR (repeatable)")
    ap.add_argument("--pdf", default=str(PDF_DIR / "01_chart_paper_tracemonkey.pdf"))
    ap.add_argument("--pages", type=int, default=4)
    args = ap.parse_args()
    import pymupdf as fitz  # the `fitz` name is deprecated

    print(f"machine: {machine()}")
    print(f"input: first {args.pages} pages of {Path(args.pdf).name}\n")
    print("| variant | pages | wall (s) | pages/minute | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for spec in args.bundle:
        name, _, bundle = spec.rpartition("=")
        with tempfile.TemporaryDirectory() as tmp:
            docs = Path(tmp) / "docs"
            docs.mkdir()
            with fitz.open(args.pdf) as src, fitz.open() as dst:
                dst.insert_pdf(src, from_page=0, to_page=args.pages - 1)
                dst.save(docs / "doc.pdf")
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "colrag", "index", str(docs), "--index", str(Path(tmp) / "index"), "--retriever", bundle],
                capture_output=True, text=True,
            )
            wall = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if proc.returncode != 0:
                print(f"| {name or bundle} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | |")
                continue
            peak_note = f"{peak / 1e6:.1f}" if peak > before else f"≤ {before / 1e6:.1f}"
            print(f"| {name or 'colrag'} | {args.pages} | {wall:.1f} | {args.pages / wall * 60:.2f} | {peak_note} |", flush=True)


if __name__ == "__main__":
    main()
