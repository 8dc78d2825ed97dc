"""Indexing memory against corpus size, side by side for several code trees (issue 15 item 17).

    python bench/bench_index_memory.py --bundle /tmp/tiny/retriever --copies 12 \\
        --code before=/tmp/colrag-main --code after=.

Indexes COPIES copies of the readable PDFs of ../shared/data/pdfs (58 pages each) with the
retriever bundle (the tiny test model is enough: the memory at stake is the index's, not
the model's) through `colrag index --json`, each variant in a fresh process whose code is
taken from its tree (PYTHONPATH). The RSS of the indexing process and of its render child
(colrag.render_worker) is sampled every 0.2 s from /proc; the progress lines on stderr
(every 10 s) say how many pages are done, so the table gives the RSS at each quarter of
the run as well as the peak and the page count at which it happened. Variants alternate
run by run.

    python bench/bench_index_memory.py --store-pages 720 --code before=/tmp/colrag-main --code after=.

measures the index writer alone (no model, no rendering: pages of 783 random unit vectors
added 4 per commit through Index.add_pages, as the indexer commits them), which is where
memory could grow with the corpus; it crosses coarse.MIN_ROWS (~670 pages), where the
writer trains its centroids once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import PDF_DIR, machine

READABLE = ("01_", "03_", "06_", "12_", "15_", "21_")  # the shared PDFs that index (the others fail at once)
_DONE = re.compile(r"^(\d+)/(\d+) pages")


def rss_mb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def render_children(pid: int) -> list[int]:
    """The render child(ren) of `pid` (other children are short-lived forks of a library: not counted)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(") ", 1)[1].split()[1]) == pid and b"render_worker" in cmdline:
            out.append(int(d))
    return out


def run(code: Path, bundle: Path, docs: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "COLRAG_HOME": str(work / "home")}
    cmd = [sys.executable, "-m", "colrag", "index", str(docs), "--index", str(work / "ix")]
    cmd += ["--retriever", str(bundle), "--json"]
    t0 = time.perf_counter()
    work.mkdir(parents=True)  # the cwd: python puts it first on sys.path, before PYTHONPATH's tree
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = {"self": 0, "child": 0, "at": 0, "done": 0, "total": 0}
    trace: list[tuple[int, int, int]] = []  # (pages done, RSS, render child RSS) at each progress line

    def sample() -> None:
        while proc.poll() is None:
            mine, child = rss_mb(proc.pid), sum(rss_mb(c) for c in render_children(proc.pid))
            if mine > state["self"]:
                state["self"], state["at"] = mine, state["done"]
            state["child"] = max(state["child"], child)
            time.sleep(0.2)

    def progress() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = _DONE.match(line)
            if m:
                state["done"], state["total"] = int(m[1]), int(m[2])
                trace.append((state["done"], rss_mb(proc.pid), sum(rss_mb(c) for c in render_children(proc.pid))))

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=progress, daemon=True)]
    for t in threads:
        t.start()
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    wall = time.perf_counter() - t0
    for t in threads:
        t.join()
    report = json.loads(out)
    quarters = []
    for q in (0.25, 0.5, 0.75, 1.0):
        at = [r for r in trace if r[0] >= q * max(state["total"], 1)]
        quarters.append(at[0][1] if at else 0)
    return {"wall": wall, "pages": report["run"]["pages"], "quarters": quarters, **state}


STORE_CHILD = r"""
import sys
from pathlib import Path
import numpy as np
from colrag.store import Index, RetrieverInfo

def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out

class Info:
    name, bundle_id, dim, max_pixels = "bench", "bench", 128, 602112

n_pages, folder = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
dirs = rng.standard_normal((64, 128)).astype(np.float32)
with Index.open_writer(folder, RetrieverInfo.of(Info())) as index:
    import colrag
    print("start", status()["VmRSS"], colrag.__file__, flush=True)
    doc = index.begin_document("/bench.pdf", 1, 1, "sha", n_pages)
    for first in range(0, n_pages, 4):
        batch = []
        for no in range(first + 1, min(first + 5, n_pages + 1)):
            x = dirs[rng.integers(0, 64, 783)] + 0.3 * rng.standard_normal((783, 128)).astype(np.float32)
            batch.append((no, 965, 1249, x))
        index.add_pages(doc, batch)
        st = status()
        print("page", first + len(batch), st["VmRSS"], st["VmHWM"], flush=True)
    index.finish_document(doc)
print("end", status()["VmHWM"], flush=True)
"""


def run_store(code: Path, n_pages: int, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    work.mkdir(parents=True)  # the cwd
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", STORE_CHILD, str(n_pages), str(work / "ix")],
        cwd=work,  # not the caller's folder: python -c puts the cwd first on sys.path
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    trace = [line.split() for line in out.splitlines() if line.startswith("page ")]
    peak_at, peak, last_hwm = 0, 0, 0
    for _, page, _, hwm in trace:
        if int(hwm) > last_hwm:
            peak_at, peak, last_hwm = int(page), int(hwm), int(hwm)
    quarters = [int(next(r for r in trace if int(r[1]) >= q * n_pages)[2]) for q in (0.25, 0.5, 0.75, 1.0)]
    start_line = next(line.split() for line in out.splitlines() if line.startswith("start"))
    start, module = int(start_line[1]), start_line[2]
    return {
        "wall": time.perf_counter() - t0,
        "pages": n_pages,
        "quarters": quarters,
        "self": peak,
        "at": peak_at,
        "child": 0,
        "start": start,
        "module": module,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="retriever bundle folder (colrag index runs)")
    ap.add_argument("--store-pages", type=int, default=0, help="measure the index writer alone on this many pages")
    ap.add_argument("--code", action="append", required=True, help="NAME=DIR: a colrag source tree (repeatable)")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    if not args.store_pages and args.bundle is None:
        ap.error("--bundle is needed (or --store-pages)")
    variants = [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.code]
    print(f"machine: {machine()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for i in range(args.copies):
            for pdf in sorted(PDF_DIR.glob("*.pdf")):
                if pdf.name.startswith(READABLE):
                    shutil.copy(pdf, docs / f"c{i:03d}_{pdf.name}")
        rows: dict[str, list[dict]] = {name: [] for name, _ in variants}
        for _ in range(args.runs):
            for name, code in variants:
                work = Path(tmp) / f"work-{name}"
                shutil.rmtree(work, ignore_errors=True)
                r = run_store(code, args.store_pages, work) if args.store_pages else run(code, args.bundle, docs, work)
                rows[name].append(r)
                print(
                    f"  {name}: {r['pages']} pages {r['wall']:.1f} s, peak RSS {r['self']} MB at page {r['at']} "
                    f"(+ render child {r['child']} MB); RSS at 1/4, 1/2, 3/4, end: {r['quarters']} MB, "
                    f"load {os.getloadavg()[0]:.1f}" + (f"; colrag from {r['module']}" if "module" in r else ""),
                    flush=True,
                )
    print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
    print(
        "| code | pages | wall (s), each run | peak RSS indexing process (MB), at page | "
        "RSS at 1/4, 1/2, 3/4, end (MB) | peak RSS render child (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        top = max(runs, key=lambda r: r["self"])
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
        print(
            f"| {name} | {runs[0]['pages']} | {walls} | "
            f"{top['self']} at {top['at']} | {', '.join(map(str, top['quarters']))} | "
            f"{max(r['child'] for r in runs)} |"
        )


if __name__ == "__main__":
    main()
