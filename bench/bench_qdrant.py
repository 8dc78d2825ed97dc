"""Qdrant Edge backend at scale: build, disk per page, search latency, recall vs exact MaxSim.

    flock /tmp/colrag-heavy.lock python bench/bench_qdrant.py --pages 10000 [--queries 40] [--runs 3]
        [--candidates 64 128 256]

Pages are bench_search.py's synthetic ColQwen2 proxy (783 tokens of 128 dims, pages mixing
24 of 4,096 Zipf-popular concepts): the same corpus the local store is measured on. The
index is written through colrag's Qdrant API (open_qdrant / add_page / commit, 250 pages
per commit), then optimize() (the pooled vectors' HNSW graph); the exact float32
MaxSim of every query against every page is computed during the same pass, from the
original (unrounded) vectors, so recall is measured against exact MaxSim over all pages.

Queries: half "page queries" (20 tokens of a target page + noise, 5 prompt tokens), half
"random queries" (20 noisy popular concepts; no right answer, near-tied candidates).
Tie-tolerant recall@5: a returned page counts when its exact score >= (exact 5th best) - 1 %
of it; strict recall@5: the returned set equals the exact top-5 set, averaged per page.
Latency: QdrantIndex.search (query vectors given), warm: every query searched once untimed,
then --runs timed passes. Disk: allocated blocks of the index folder after close.
Index cached under ~/.cache/colrag-bench/qdrant/<pages>/ (COLRAG_BENCH_DIR overrides the parent).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_search import Synth  # noqa: E402  (after the sys.path line: runs as a script)
from colrag.store.qdrant import EDGE_PREFIX, open_qdrant  # noqa: E402  (after the sys.path line: runs as a script)

PAGES_PER_DOC = 500
PAGES_PER_COMMIT = 250


def bench_dir() -> Path:
    base = os.environ.get("COLRAG_BENCH_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "colrag-bench") / "qdrant"


def make_queries(synth: Synth, n_pages: int, n: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(7)
    targets = rng.choice(n_pages, size=n // 2, replace=False)
    queries, kinds = [], []
    for t in targets:
        (page,) = synth.pages(int(t), 1)
        queries.append(synth.page_query(rng, page))
        kinds.append("page")
    for _ in range(n - n // 2):
        queries.append(synth.random_query(rng))
        kinds.append("random")
    return np.stack(queries), kinds  # (n, 25, dim)


def name_of(number: int) -> tuple[str, int]:
    return f"/synthetic/doc{number // PAGES_PER_DOC:05d}.pdf", number % PAGES_PER_DOC + 1


def build(folder: Path, n_pages: int, synth: Synth, queries: np.ndarray) -> tuple[dict, np.ndarray]:
    """Write the pages and compute exact scores (n_queries, n_pages) in the same pass."""
    exact = np.zeros((len(queries), n_pages), dtype=np.float32)
    q_all = queries.reshape(-1, queries.shape[-1])  # (n_q * 25, dim)
    t0 = time.perf_counter()
    add_s = commit_s = 0.0
    with open_qdrant(EDGE_PREFIX + str(folder), create=True, dim=queries.shape[-1]) as ix:
        for first in range(0, n_pages, PAGES_PER_COMMIT):
            pages = synth.pages(first, min(PAGES_PER_COMMIT, n_pages - first))
            block = np.concatenate(pages)  # (sum tokens, dim)
            sim = q_all @ block.T  # (n_q * 25, sum tokens)
            starts = np.cumsum([0] + [len(p) for p in pages[:-1]])
            best = np.maximum.reduceat(sim, starts, axis=1)  # (n_q * 25, n_block)
            exact[:, first : first + len(pages)] = best.reshape(len(queries), -1, len(pages)).sum(axis=1)
            t = time.perf_counter()
            for i, vecs in enumerate(pages):
                ix.add_page(*name_of(first + i), vecs)
            t1 = time.perf_counter()
            ix.commit()
            add_s += t1 - t
            commit_s += time.perf_counter() - t1
            if (first // PAGES_PER_COMMIT) % 20 == 0:
                print(
                    f"  {first + len(pages)}/{n_pages} pages, {time.perf_counter() - t0:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
        t = time.perf_counter()
        ix.optimize()
        optimize_s = time.perf_counter() - t
    return {
        "build_s": round(time.perf_counter() - t0, 1),
        "add_s": round(add_s, 1),
        "commit_s": round(commit_s, 1),
        "optimize_s": round(optimize_s, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }, exact


def recall(hits: list, exact_row: np.ndarray, k: int = 5) -> tuple[float, float, float]:
    """(tie-tolerant recall@k, strict recall@k, max relative score drift) of one query's hits."""
    order = np.argsort(-exact_row)
    kth = exact_row[order[k - 1]]
    top = {int(i) for i in order[:k]}
    numbers = [(int(h.file[len("/synthetic/doc") : -4]) * PAGES_PER_DOC + h.page - 1) for h in hits]
    tolerant = sum(exact_row[n] >= kth - 0.01 * abs(kth) for n in numbers) / k
    strict = len(top & set(numbers)) / k
    drift = max(abs(h.score - exact_row[n]) / abs(exact_row[n]) for h, n in zip(hits, numbers, strict=True))
    return tolerant, strict, drift


def measure(folder: Path, queries: np.ndarray, kinds: list[str], exact: np.ndarray, runs: int, candidates: int) -> dict:
    with open_qdrant(EDGE_PREFIX + str(folder), create=False) as ix:
        ix.candidates = candidates
        t = time.perf_counter()
        results = [ix.search(q, 5) for q in queries]  # warm-up, and the results scored below
        first_pass = time.perf_counter() - t
        times = []
        for _ in range(runs):
            for q in queries:
                t = time.perf_counter()
                ix.search(q, 5)
                times.append(time.perf_counter() - t)
    scored = [recall(h, exact[i]) for i, h in enumerate(results)]
    out = {
        "candidates": candidates,
        "p50_ms": round(1000 * float(np.median(times)), 1),
        "p90_ms": round(1000 * float(np.percentile(times, 90)), 1),
        "warmup_mean_ms": round(1000 * first_pass / len(queries), 1),
    }
    for kind in ("page", "random"):
        sel = [s for s, kd in zip(scored, kinds, strict=True) if kd == kind]
        out[kind] = {
            "recall5_tolerant": round(float(np.mean([s[0] for s in sel])), 3),
            "recall5_strict": round(float(np.mean([s[1] for s in sel])), 3),
            "drift_p99": float(np.percentile([s[2] for s in sel], 99)),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--candidates", type=int, nargs="+", default=[64, 128, 256])
    args = ap.parse_args()
    folder = bench_dir() / str(args.pages)
    synth = Synth()
    queries, kinds = make_queries(synth, args.pages, args.queries)
    exact_file = folder.parent / f"{args.pages}.exact-{args.queries}.npy"
    info_file = folder.parent / f"{args.pages}.build.json"
    if exact_file.is_file() and info_file.is_file():
        exact, info = np.load(exact_file), json.loads(info_file.read_text())
    else:
        if folder.exists():
            print(f"{folder} exists without a finished build record: remove it first", file=sys.stderr)
            return 1
        folder.parent.mkdir(parents=True, exist_ok=True)
        info, exact = build(folder, args.pages, synth, queries)
        np.save(exact_file, exact)
        info_file.write_text(json.dumps(info))
    disk = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
    res = {
        "pages": args.pages,
        "queries": args.queries,
        "load": os.getloadavg(),
        **info,
        "disk_bytes": disk,
        "disk_per_page_kb": round(disk / args.pages / 1000, 1),
        "runs": [],
    }
    for c in args.candidates:
        res["runs"].append(measure(folder, queries, kinds, exact, args.runs, c))
        print(json.dumps(res["runs"][-1]), file=sys.stderr, flush=True)
    res["load_after"] = os.getloadavg()
    res["process_max_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # build + search, or search only
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
