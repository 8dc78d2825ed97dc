"""Search benchmark on synthetic indexes: latency, recall@5 vs exact MaxSim, bytes per page, open time.

    python bench/bench_search.py --sizes 1000 10000 100000 [--queries 40] [--runs 5]

Indexes are built once through the real writer API (Index.open_writer / begin_document /
add_pages / finish_document, then the inverted-file refresh `colrag index` does) and
cached under ~/.cache/colrag-bench/search/<pages>/ (COLRAG_BENCH_DIR overrides).

Synthetic pages are a proxy for ColQwen2 embeddings: 768 image tokens + 15 prompt-text
tokens of 128 dims, L2-normalised. Image tokens are clustered: 4,096 "concept"
directions with Zipf popularity; a page uses 24 concepts with Dirichlet(0.5) weights
(a few dominate, like background and body text); each (page, concept) pair gets its
own jittered centre (cos ~0.9 to the concept) and each token is that centre plus noise
(cos ~0.87). The 15 text tokens are the same prompt on every page plus small noise.
Queries have 25 tokens: 5 fixed "query prompt" tokens + 20 content tokens, either
20 stored tokens of a target page plus noise (cos ~0.85; the target is the right
answer) or 20 noisy popular concepts (random queries, no right answer).

Latency is Searcher.search_vectors (after the query is embedded), warm (the index is
opened once, every query searched once untimed, then `--runs` timed times). Recall@5 compares the
returned top 5 with exact brute-force MaxSim over every stored (decoded) vector.
Open time is measured in a new process: import + Index.open + Searcher + the first
search (which loads the snapshot and the inverted file). Cold searches: 8 queries in a
new process right after the index's files were dropped from the page cache
(posix_fadvise DONTNEED; Linux), i.e. every candidate page read from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from colrag.search import Searcher  # noqa: E402
from colrag.store import Index, RetrieverInfo  # noqa: E402

DIM = 128
IMAGE_TOKENS = 768
TEXT_TOKENS = 15
N_CONCEPTS = 4096
CONCEPTS_PER_PAGE = 24
PAGES_PER_DOC = 500
PAGES_PER_COMMIT = 250
QUERY_PROMPT = 5
QUERY_CONTENT = 20
INFO = RetrieverInfo("synthetic-colqwen2-proxy", "synthetic", DIM, 768 * 28 * 28)


def bench_dir() -> Path:
    return Path(os.environ.get("COLRAG_BENCH_DIR", Path.home() / ".cache" / "colrag-bench" / "search"))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Synth:
    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.concepts = _unit(rng.standard_normal((N_CONCEPTS, DIM)))  # (K, dim)
        w = 1.0 / np.arange(1, N_CONCEPTS + 1) ** 0.7
        self.popularity = w / w.sum()
        self.prompt = _unit(rng.standard_normal((TEXT_TOKENS, DIM)))  # page prompt tokens
        self.query_prompt = _unit(rng.standard_normal((QUERY_PROMPT, DIM)))
        self.noise = (rng.standard_normal((1 << 18, DIM)) * 0.05).astype(np.float32)  # token noise bank

    def pages(self, first: int, n: int) -> list[np.ndarray]:
        """Pages first .. first+n-1, each (783, 128) float32 unit rows (deterministic per page number)."""
        out = []
        for number in range(first, first + n):
            rng = np.random.default_rng([1, number])
            chosen = rng.choice(N_CONCEPTS, size=CONCEPTS_PER_PAGE, replace=False, p=self.popularity)
            centres = _unit(
                self.concepts[chosen] + 0.04 * rng.standard_normal((CONCEPTS_PER_PAGE, DIM)).astype(np.float32)
            )
            weights = rng.dirichlet(np.full(CONCEPTS_PER_PAGE, 0.5))
            which = rng.choice(CONCEPTS_PER_PAGE, size=IMAGE_TOKENS, p=weights)
            image = centres[which] + self.noise[rng.integers(0, len(self.noise), IMAGE_TOKENS)]  # (768, dim)
            text = self.prompt + 0.2 * self.noise[rng.integers(0, len(self.noise), TEXT_TOKENS)]  # (15, dim)
            out.append(_unit(np.concatenate([text, image])))
        return out

    def random_query(self, rng) -> np.ndarray:
        chosen = rng.choice(N_CONCEPTS, size=QUERY_CONTENT, p=self.popularity)
        content = _unit(self.concepts[chosen] + 0.08 * rng.standard_normal((QUERY_CONTENT, DIM)).astype(np.float32))
        return np.concatenate([self.query_prompt, content])  # (25, dim)

    def page_query(self, rng, stored: np.ndarray) -> np.ndarray:
        rows = stored[TEXT_TOKENS + rng.choice(IMAGE_TOKENS, size=QUERY_CONTENT, replace=False)]
        content = _unit(rows + 0.06 * rng.standard_normal(rows.shape).astype(np.float32))
        return np.concatenate([self.query_prompt, content])  # (25, dim)


def build(n_pages: int, folder: Path, synth: Synth) -> dict:
    """Write n_pages through the writer API (resumable: documents already done are skipped)."""
    t0 = time.perf_counter()
    with Index.open_writer(folder, INFO) as index:
        done = {d.path for d in index.documents("done")}
        for first in range(0, n_pages, PAGES_PER_DOC):
            n = min(PAGES_PER_DOC, n_pages - first)
            path = f"/synthetic/doc{first // PAGES_PER_DOC:05d}.pdf"
            if path in done:
                continue
            doc = index.begin_document(path, n, 1, f"synthetic-{first}-{n}", n)
            for start in range(0, n, PAGES_PER_COMMIT):
                k = min(PAGES_PER_COMMIT, n - start)
                vecs = synth.pages(first + start, k)
                index.add_pages(doc, [(start + i + 1, 965, 1249, v) for i, v in enumerate(vecs)])
            index.finish_document(doc)
            print(f"  {first + n}/{n_pages} pages, {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        t1 = time.perf_counter()
        index.writer.refresh_lists(force=True)
        ivf_s = time.perf_counter() - t1
    return {"build_s": time.perf_counter() - t0, "ivf_build_s": ivf_s, "max_rss_mb": _rss_mb()}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_queries(index: Index, synth: Synth, n: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(7)
    snap = index.snapshot()
    queries, kinds = [], []
    for i in range(n):
        if i % 4 == 3:
            queries.append(synth.random_query(rng))
            kinds.append("random")
        else:
            page = snap.pages[rng.integers(len(snap.pages))]
            queries.append(synth.page_query(rng, index.page_vectors(snap, page)))
            kinds.append(f"{page.path}#{page.page_no}")
    return queries, kinds


def exact_top(index: Index, queries: list[np.ndarray], k: int = 5) -> list[list[tuple[str, int, float]]]:
    """Brute-force MaxSim of every query against every stored page (decoded), top k with scores.

    All queries at once, 16 pages at a time (bounded memory), over the same stored rows."""
    snap = index.snapshot()
    q_all = np.concatenate(queries)  # (sum n_q, dim)
    q_starts = np.cumsum([0] + [len(q) for q in queries[:-1]])
    scores = np.zeros((len(queries), len(snap.pages)), dtype=np.float32)
    step = 16
    for start in range(0, len(snap.pages), step):
        block = snap.pages[start : start + step]
        rows = np.concatenate([index.page_vectors(snap, p) for p in block])  # (n, dim), decoded as FAISS does
        sim = q_all @ rows.T  # (sum n_q, n)
        p_starts = np.cumsum([0] + [p.n_tokens for p in block[:-1]])
        per_page = np.maximum.reduceat(sim, p_starts, axis=1)  # (sum n_q, len(block))
        scores[:, start : start + len(block)] = np.add.reduceat(per_page, q_starts, axis=0)
    out = []
    for row in scores:
        order = sorted(
            np.argsort(-row)[: k + 5].tolist(), key=lambda i: (-row[i], snap.pages[i].path, snap.pages[i].page_no)
        )
        out.append([(snap.pages[i].path, snap.pages[i].page_no, float(row[i])) for i in order[:k]])
    return out


def _in_new_process(code: str, *args) -> list[float]:
    """Run `code` in a fresh Python with colrag importable; the numbers it prints."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    return [float(x) for x in out.stdout.split()]


def open_time(folder: Path, query_file: Path, repeats: int = 3) -> dict:
    code = (
        "import time, sys, numpy as np; t0 = time.perf_counter()\n"
        "from colrag.store import Index; from colrag.search import Searcher\n"
        "t1 = time.perf_counter(); ix = Index.open(sys.argv[1]); s = Searcher(ix, None); snap = s._current_view().snap\n"
        "t2 = time.perf_counter(); s.search_vectors(np.load(sys.argv[2]), 5); t3 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1, t3 - t2)"
    )
    runs = []
    for _ in range(repeats):
        runs.append(_in_new_process(code, folder, query_file))
    med = np.median(np.array(runs), axis=0)
    return {"import_s": med[0], "open_snapshot_s": med[1], "first_search_s": med[2]}


def evict(folder: Path) -> bool:
    """Drop the index's files from the page cache (Linux; files no process maps). False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def cold_searches(folder: Path, queries_file: Path) -> list[float] | None:
    """Seconds per search in a new process right after the index left the page cache (the first
    searches on an index not used for a while; this machine pages out what is idle for ~60 s)."""
    if not evict(folder):
        return None
    code = (
        "import time, sys, numpy as np\n"
        "from colrag.store import Index; from colrag.search import Searcher\n"
        "ix = Index.open(sys.argv[1]); s = Searcher(ix, None); qs = np.load(sys.argv[2])\n"
        "for q in qs:\n"
        "    t = time.perf_counter(); s.search_vectors(q, 5); print(time.perf_counter() - t)"
    )
    return _in_new_process(code, folder, queries_file)


def disk_breakdown(folder: Path) -> dict:
    parts = {
        "vectors": 0,
        "codes": 0,
        "codebook": 0,
        "ivf": 0,
        "catalog": 0,
        "other": 0,
    }  # FAISS: seg / -, coarse, lists
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        size = p.stat().st_size
        if p.name.startswith("seg-"):
            parts["vectors"] += size
        elif p.name.startswith("coarse-"):
            parts["codebook"] += size
        elif p.name.startswith("lists-"):
            parts["ivf"] += size
        elif p.name.startswith("catalog.sqlite"):
            parts["catalog"] += size
        else:
            parts["other"] += size
    return parts


def run_size(n_pages: int, n_queries: int, runs: int, nprobe: int | None, candidates: int | None, sweep=()) -> dict:
    folder = bench_dir() / str(n_pages)
    synth = Synth()
    info_file = folder.parent / f"{n_pages}.build.json"
    with_build = None
    complete = False
    if (folder / "manifest.json").is_file():
        with Index.open(folder) as ix:
            snap = ix.snapshot()
            lists = ix.page_lists(snap)
            complete = len(snap.pages) == n_pages and lists is not None and lists.generation == snap.generation
    if not complete:
        print(f"building {n_pages} pages in {folder}", file=sys.stderr, flush=True)
        with_build = build(n_pages, folder, synth)
        info_file.write_text(json.dumps(with_build))
    build_info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    kwargs = {k: v for k, v in (("nprobe", nprobe), ("candidates", candidates)) if v is not None}
    with Index.open(folder) as index:
        queries, kinds = make_queries(index, synth, n_queries)
        truth_file = folder.parent / f"{n_pages}.truth.{n_queries}.v3.json"
        if truth_file.is_file():
            truth = [[(f, p, s) for f, p, s in row] for row in json.loads(truth_file.read_text())]
        else:
            t = time.perf_counter()
            truth = exact_top(index, queries)
            print(f"  exact top-5 of {n_queries} queries: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
            truth_file.write_text(json.dumps(truth))
        searcher = Searcher(index, None, **kwargs)
        for q in queries:  # warm-up pass: snapshot, inverted file, candidate pages (cold searches: cold_searches)
            searcher.search_vectors(q, 5)
        lat = np.zeros((runs, n_queries))
        found = np.zeros(n_queries)
        near = np.zeros(n_queries)
        first_ok = []
        for r in range(runs):
            for i, q in enumerate(queries):
                t = time.perf_counter()
                hits = searcher.search_vectors(q, 5)
                lat[r, i] = time.perf_counter() - t
                if r == 0:
                    got = [(h.file, h.page) for h in hits]
                    found[i] = len(set(got) & {(f, p) for f, p, _ in truth[i]}) / 5
                    # near-tie tolerant: a returned page counts when its exact score is within 1% of the exact 5th
                    near[i] = sum(h.score >= 0.99 * truth[i][-1][2] for h in hits) / 5
                    if kinds[i] != "random":
                        first_ok.append(got[0] == (kinds[i].split("#")[0], int(kinds[i].split("#")[1])))
        pages = len(index.snapshot().pages)
        tokens = index.stats()["tokens"]
        swept = []
        for npr, cand in sweep:  # recall / latency trade-off, one run each
            s = Searcher(index, None, nprobe=npr, candidates=cand)
            for q in queries:  # warm: this setting's extra candidates into the page cache, like the main runs
                s.search_vectors(q, 5)
            t_all, rec = [], []
            for i, q in enumerate(queries):
                t = time.perf_counter()
                hits = s.search_vectors(q, 5)
                t_all.append(time.perf_counter() - t)
                rec.append(len({(h.file, h.page) for h in hits} & {(f, p) for f, p, _ in truth[i]}) / 5)
            swept.append(
                {
                    "nprobe": npr,
                    "candidates": cand,
                    "recall5": float(np.mean(rec)),
                    "p50_ms": float(np.median(t_all) * 1000),
                }
            )
    qfile = folder.parent / "query0.npy"
    np.save(qfile, queries[0])
    opened = open_time(folder, qfile)
    cold_file = folder.parent / "cold_queries.npy"
    np.save(cold_file, np.stack([q for q in queries[1:9]]))  # every query has 25 tokens
    cold = cold_searches(folder, cold_file)
    disk = disk_breakdown(folder)
    is_random = np.array([k == "random" for k in kinds])
    per_run_p50 = np.median(lat, axis=1) * 1000
    return {
        "pages": pages,
        "tokens_per_page": tokens / pages,
        "p50_ms": float(np.median(lat) * 1000),
        "p95_ms": float(np.percentile(lat, 95) * 1000),
        "p50_runs_ms": [round(float(x), 1) for x in per_run_p50],
        "recall5": float(found.mean()),
        "recall5_within_1pct": float(near.mean()),
        "recall5_page_queries": float(found[~is_random].mean()),
        "recall5_random_queries": float(found[is_random].mean()) if is_random.any() else None,
        "target_first": float(np.mean(first_ok)) if first_ok else None,
        "bytes_per_page": sum(disk.values()) / pages,
        "disk": {k: v / pages for k, v in disk.items()},
        **{f"open_{k}": v for k, v in opened.items()},
        "build": build_info,
        "params": kwargs,
        "cold_search_s": cold,
        "load": os.getloadavg(),
        "sweep": swept,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nprobe", type=int)
    ap.add_argument("--candidates", type=int)
    ap.add_argument(
        "--sweep", nargs="*", default=[], metavar="NPROBE,CANDIDATES", help="also measure these settings (one run each)"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--build-only", action="store_true", help="build (or finish) the indexes, measure nothing")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    for n in args.sizes:
        if args.build_only:
            folder = bench_dir() / str(n)
            info = build(n, folder, Synth())
            (folder.parent / f"{n}.build.json").write_text(json.dumps(info))
            print(json.dumps({"pages": n, **info}))
            continue
        sweep = [tuple(int(x) for x in item.split(",")) for item in args.sweep]
        res = run_size(n, args.queries, args.runs, args.nprobe, args.candidates, sweep)
        if args.json:
            print(json.dumps(res))
            continue
        d = res["disk"]
        print(
            f"\n## {res['pages']:,} pages ({res['tokens_per_page']:.0f} tokens/page), params {res['params'] or 'default'}"
        )
        print("| metric | value |\n|---|---|")
        print(
            f"| search p50 / p95 (after embedding) | {res['p50_ms']:.1f} ms / {res['p95_ms']:.1f} ms (p50 per run: {res['p50_runs_ms']}) |"
        )
        print(
            f"| recall@5 vs exact MaxSim | {res['recall5']:.3f} (page queries {res['recall5_page_queries']:.3f}, random queries {res['recall5_random_queries']:.3f}); target page first {res['target_first']:.3f} |"
        )
        print(f"| top 5 within 1% of the exact 5th score | {res['recall5_within_1pct']:.3f} |")
        print(
            f"| bytes per page | {res['bytes_per_page']:,.0f} (vectors {d['vectors']:,.0f}, codes {d['codes']:,.0f}, inverted file {d['ivf']:,.0f}, catalog {d['catalog']:,.0f}, codebook {d['codebook']:,.0f}) |"
        )
        print(
            f"| open (new process) | import {res['open_import_s'] * 1000:.0f} ms, Index.open + snapshot {res['open_open_snapshot_s'] * 1000:.0f} ms, first search {res['open_first_search_s'] * 1000:.0f} ms |"
        )
        if res["cold_search_s"]:
            c = np.array(res["cold_search_s"]) * 1000
            print(
                f"| cold: 8 searches in a new process after evicting the index from the page cache | median {np.median(c):.0f} ms, first {c[0]:.0f} ms, max {c.max():.0f} ms |"
            )
        b = res["build"]
        if b:
            print(
                f"| build | {b.get('build_s', 0):.0f} s (inverted file {b.get('ivf_build_s', 0):.1f} s), max RSS {b.get('max_rss_mb', 0):.0f} MB |"
            )
        print(f"| load average (1, 5, 15 min) after | {', '.join(f'{x:.2f}' for x in res['load'])} |")
        if res["sweep"]:
            print("\n| nprobe | candidates | recall@5 | p50 ms |\n|---|---|---|---|")
            for row in res["sweep"]:
                print(f"| {row['nprobe']} | {row['candidates']} | {row['recall5']:.3f} | {row['p50_ms']:.1f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
