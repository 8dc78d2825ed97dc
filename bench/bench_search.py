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
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from colrag.search import Searcher  # noqa: E402  (after the sys.path line: runs as a script)
from colrag.store import Index, RetrieverInfo  # noqa: E402  (after the sys.path line: runs as a script)

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


def index_folder(corpus: str, n_pages: int) -> Path:
    """neartie: <dir>/<pages> (the folders earlier measurements used); clustered: <dir>/clustered-<pages>."""
    return bench_dir() / (str(n_pages) if corpus == "neartie" else f"{corpus}-{n_pages}")


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

    def queries(self, n_pages: int, n: int) -> tuple[list[np.ndarray], list[str]]:
        """Three of four: 20 noisy tokens of a random page (the target); one of four: random concepts."""
        rng = np.random.default_rng(7)
        queries, kinds = [], []
        for i in range(n):
            if i % 4 == 3:
                queries.append(self.random_query(rng))
                kinds.append("random")
            else:
                number = int(rng.integers(n_pages))
                queries.append(self.page_query(rng, self.pages(number, 1)[0]))
                kinds.append(page_key(number))
        return queries, kinds


N_TOPICS = 256
CONCEPTS_PER_TOPIC = 16


class Topics:
    """The `clustered` corpus: pages that mix 2-4 of 256 topics (each topic: 16 concepts, Zipf(0.5)
    popularity); a query's 20 content tokens are drawn from one page's topics (noisy concepts, not
    copies of its tokens), so many pages share a query's topics and the best ones are separated by
    how much of each topic they hold. Page `number` is deterministic (seeded by it)."""

    def __init__(self, seed: int = 1):
        rng = np.random.default_rng(seed)
        centres = _unit(rng.standard_normal((N_TOPICS, DIM)))
        self.concepts = _unit(
            centres[:, None, :] + 0.9 * _unit(rng.standard_normal((N_TOPICS, CONCEPTS_PER_TOPIC, DIM)))
        )
        w = 1.0 / np.arange(1, N_TOPICS + 1) ** 0.5
        self.popularity = w / w.sum()
        self.prompt = _unit(rng.standard_normal((TEXT_TOKENS, DIM)))
        self.query_prompt = _unit(rng.standard_normal((QUERY_PROMPT, DIM)))

    def _topics(self, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.integers(2, 5))
        return rng.choice(N_TOPICS, size=k, replace=False, p=self.popularity)

    def topics_of(self, number: int) -> np.ndarray:
        return self._topics(np.random.default_rng([2, number]))

    def pages(self, first: int, n: int) -> list[np.ndarray]:
        out = []
        for number in range(first, first + n):
            rng = np.random.default_rng([2, number])
            topics = self._topics(rng)
            k = len(topics)
            tw = rng.dirichlet(np.full(k, 1.0))
            t_of = rng.choice(k, size=IMAGE_TOKENS, p=tw)
            c_of = rng.integers(0, CONCEPTS_PER_TOPIC, size=IMAGE_TOKENS)
            centres = _unit(
                self.concepts[topics] + 0.05 * rng.standard_normal((k, CONCEPTS_PER_TOPIC, DIM)).astype(np.float32)
            )
            image = centres[t_of, c_of] + 0.06 * rng.standard_normal((IMAGE_TOKENS, DIM)).astype(np.float32)
            text = self.prompt + 0.01 * rng.standard_normal((TEXT_TOKENS, DIM)).astype(np.float32)
            out.append(_unit(np.concatenate([text, image])))
        return out

    def query(self, rng: np.random.Generator, number: int) -> np.ndarray:
        topics = self.topics_of(number)
        t = topics[rng.integers(0, len(topics), QUERY_CONTENT)]
        c = rng.integers(0, CONCEPTS_PER_TOPIC, QUERY_CONTENT)
        content = _unit(self.concepts[t, c] + 0.08 * rng.standard_normal((QUERY_CONTENT, DIM)).astype(np.float32))
        return np.concatenate([self.query_prompt, content])

    def queries(self, n_pages: int, n: int) -> tuple[list[np.ndarray], list[str]]:
        rng = np.random.default_rng(7)
        queries, kinds = [], []
        for _ in range(n):
            queries.append(self.query(rng, int(rng.integers(n_pages))))
            kinds.append("topics")
        return queries, kinds


CORPORA = {"neartie": Synth, "clustered": Topics}


def page_key(number: int) -> str:
    """ "file#page" of synthetic page `number` in a bench index."""
    return f"/synthetic/doc{number // PAGES_PER_DOC:05d}.pdf#{number % PAGES_PER_DOC + 1}"


def page_number(path: str, page_no: int) -> int:
    """The synthetic page number (its generator seed) of a bench index's page."""
    return int(path.removeprefix("/synthetic/doc").removesuffix(".pdf")) * PAGES_PER_DOC + page_no - 1


def build(n_pages: int, folder: Path, synth: Synth | Topics) -> dict:
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


TIE = 0.01  # tie-tolerant recall: a returned page counts when its exact score is >= the exact 5th minus 1 % of it


def exact_scores(folder: Path, numbers: np.ndarray, gen: Synth | Topics, queries: list[np.ndarray]) -> np.ndarray:
    """(n_queries, n_pages) exact float32 MaxSim over the original, unquantized vectors of pages
    `numbers` (the index's snapshot order). The pages are regenerated from their seeds, 32 at a time
    (nothing like the 39 GB of float32 vectors of 100,000 pages is ever held); cached next to the index."""
    stacked = np.stack(queries)
    cache = folder.parent / f"{folder.name}.exact.{len(queries)}.npz"
    if cache.is_file():
        z = np.load(cache)
        if np.array_equal(z["numbers"], numbers) and np.array_equal(z["queries"], stacked):
            return z["scores"]
    t0 = time.perf_counter()
    q_all = np.concatenate(queries)  # (sum n_q, dim)
    q_starts = np.cumsum([0] + [len(q) for q in queries[:-1]])
    scores = np.empty((len(queries), len(numbers)), dtype=np.float32)
    step = 32
    for s in range(0, len(numbers), step):
        pages = [gen.pages(int(n), 1)[0] for n in numbers[s : s + step]]
        sim = q_all @ np.concatenate(pages).T  # (sum n_q, rows)
        per_page = np.maximum.reduceat(sim, np.cumsum([0] + [len(p) for p in pages[:-1]]), axis=1)
        scores[:, s : s + len(pages)] = np.add.reduceat(per_page, q_starts, axis=0)
        if s % 10000 == 0 and s:
            print(f"  exact: {s}/{len(numbers)} pages, {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    print(f"  exact float32 MaxSim of {len(queries)} queries: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    np.savez(cache, numbers=numbers, queries=stacked, scores=scores)
    return scores


def near_tied(exact: np.ndarray) -> np.ndarray:
    """Per query: how many pages score within TIE of the exact 5th best (the near-tied set; >= 5)."""
    fifth = -np.partition(-exact, 4, axis=1)[:, 4]
    return (exact >= (fifth * (1 - TIE))[:, None]).sum(axis=1)


def evaluate(
    searcher: Searcher,
    queries: list[np.ndarray],
    kinds: list[str],
    exact: np.ndarray,
    pos_of: dict[tuple[str, int], int],
    runs: int,
) -> dict:
    """Latency (warm: one untimed pass first) and recall of one searcher setting against exact float32 MaxSim."""
    for q in queries:
        searcher.search_vectors(q, 5)
    lat = np.zeros((runs, len(queries)))
    tie, strict, drift, first_ok, in_cand, cand_s, n_cand = [], [], [], [], [], [], []
    for r in range(runs):
        for i, q in enumerate(queries):
            t = time.perf_counter()
            hits = searcher.search_vectors(q, 5)
            lat[r, i] = time.perf_counter() - t
            if r:
                continue
            row = exact[i]
            top5 = np.argsort(-row, kind="stable")[:5]
            fifth = row[top5[-1]]
            got = np.array([pos_of[(h.file, h.page)] for h in hits])
            ex = row[got]
            tie.append(float(np.mean(ex >= fifth * (1 - TIE))))
            strict.append(len(set(got.tolist()) & set(top5.tolist())) / 5)
            drift.extend((np.abs(np.array([h.score for h in hits]) - ex) / ex).tolist())
            if kinds[i] not in ("random", "topics"):
                f, p = kinds[i].rsplit("#", 1)
                first_ok.append((hits[0].file, hits[0].page) == (f, int(p)))
            t = time.perf_counter()
            cand_pages = searcher.candidates(q, 5)  # the FAISS coarse stage + page-list scan alone
            cand_s.append(time.perf_counter() - t)
            n_cand.append(len(cand_pages))
            cand = np.array([pos_of[(c.path, c.page_no)] for c in cand_pages])
            in_cand.append(min(5, int((row[cand] >= fifth * (1 - TIE)).sum())) / 5)  # the best the rerank can do
    is_random = np.array([k == "random" for k in kinds])
    strict_a = np.array(strict)
    return {
        "p50_ms": float(np.median(lat) * 1000),
        "p95_ms": float(np.percentile(lat, 95) * 1000),
        "p50_runs_ms": [round(float(x), 1) for x in np.median(lat, axis=1) * 1000],
        "candidates_p50_ms": float(np.median(cand_s) * 1000),
        "n_candidates": int(np.median(n_cand)),
        "recall5_tie": float(np.mean(tie)),
        "recall5_strict": float(strict_a.mean()),
        "recall5_strict_random": float(strict_a[is_random].mean()) if is_random.any() else None,
        "recall5_strict_others": float(strict_a[~is_random].mean()),
        "candidate_tie": float(np.mean(in_cand)),
        "drift_p99": float(np.percentile(drift, 99)),
        "target_first": float(np.mean(first_ok)) if first_ok else None,
        "misses": [i for i, v in enumerate(tie) if v < 1],
    }


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
        "t1 = time.perf_counter(); ix = Index.open(sys.argv[1]); s = Searcher(ix, None); snap = "
        "s._current_view().snap\n"
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


def add_one_page(folder: Path, gen: Synth | Topics, n_pages: int, repeats: int = 3) -> dict:
    """Seconds to add one page to the index and commit it, through the public API in a new process
    (colrag.open_index, add_page, commit: `repeats` times, each page a new file, the corpus's next
    pages), on a copy of the index so the measured one stays as built: the FAISS files are hard-linked
    (each version is written once and never modified in place), everything else is copied. The copy
    is deleted afterwards."""
    copy = folder.parent / f".add-one-{folder.name}"
    pages_file = folder.parent / f".add-one-{folder.name}.npy"
    if copy.exists():
        shutil.rmtree(copy)  # this function's own leftover
    t0 = time.perf_counter()
    for src in sorted(folder.rglob("*")):
        dst = copy / src.relative_to(folder)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".faiss":
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    copy_s = time.perf_counter() - t0
    np.save(pages_file, np.stack(gen.pages(n_pages, repeats)))
    code = (
        "import time, sys, numpy as np; t0 = time.perf_counter()\n"
        "import colrag; t1 = time.perf_counter()\n"
        "ix = colrag.open_index(sys.argv[1], create=False); t2 = time.perf_counter(); out = [t1 - t0, t2 - t1]\n"
        "for i, v in enumerate(np.load(sys.argv[2])):\n"
        "    t = time.perf_counter(); ix.add_page(f'/extra/add-one-{i}.pdf', 1, v); ix.commit()\n"
        "    out.append(time.perf_counter() - t)\n"
        "t = time.perf_counter(); ix.close(); out.append(time.perf_counter() - t); print(*out)"
    )
    try:
        times = _in_new_process(code, copy, pages_file)
    finally:
        shutil.rmtree(copy)
        pages_file.unlink(missing_ok=True)
    adds = times[2:-1]
    return {
        "import_s": times[0],
        "open_s": times[1],
        "add_commit_s": adds,
        "add_commit_median_s": float(np.median(adds)),
        "close_s": times[-1],
        "copy_s": copy_s,
    }


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


def run_size(
    corpus: str,
    n_pages: int,
    n_queries: int,
    runs: int,
    params: dict,
    sweep=(),
    cold: bool = True,
    partial: bool = False,
    add_one: int = 0,
) -> dict:
    folder = index_folder(corpus, n_pages)
    gen = CORPORA[corpus]()
    info_file = folder.parent / f"{folder.name}.build.json"
    complete = False
    if (folder / "manifest.json").is_file():
        with Index.open(folder) as ix:
            snap = ix.snapshot()
            lists = ix.page_lists(snap)
            complete = len(snap.pages) == n_pages and lists is not None and lists.generation == snap.generation
    if not complete and not partial:
        print(f"building {n_pages} pages in {folder}", file=sys.stderr, flush=True)
        info_file.write_text(json.dumps(build(n_pages, folder, gen)))
    build_info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    with Index.open(folder) as index:
        snap = index.snapshot()
        n_pages = len(snap.pages)  # a partial build (--partial): its pages are the first n_pages numbers
        queries, kinds = gen.queries(n_pages, n_queries)
        numbers = np.array([page_number(p.path, p.page_no) for p in snap.pages], dtype=np.int64)
        exact = exact_scores(folder, numbers, gen, queries)
        pos_of = {(p.path, p.page_no): i for i, p in enumerate(snap.pages)}
        ties = near_tied(exact)
        main_run = evaluate(Searcher(index, None, **params), queries, kinds, exact, pos_of, runs)
        swept = []
        for npr, cand, missing in sweep:  # recall / latency trade-off, `runs` runs each
            s = Searcher(index, None, nprobe=npr, candidates=cand, missing=missing, threads=params.get("threads"))
            swept.append(
                {
                    "nprobe": npr,
                    "candidates": cand,
                    "missing": missing,
                    **evaluate(s, queries, kinds, exact, pos_of, runs),
                }
            )
        pages = len(snap.pages)
        tokens = index.stats()["tokens"]
    opened = cold_s = None
    if cold:
        qfile = folder.parent / "query0.npy"
        np.save(qfile, queries[0])
        opened = open_time(folder, qfile)
        cold_file = folder.parent / "cold_queries.npy"
        np.save(cold_file, np.stack([q for q in queries[1:9]]))  # every query has 25 tokens
        cold_s = cold_searches(folder, cold_file)
    disk = disk_breakdown(folder)
    added = add_one_page(folder, gen, pages, add_one) if add_one else None
    return {
        "corpus": corpus,
        "pages": pages,
        "tokens_per_page": tokens / pages,
        **main_run,
        "near_tied": {
            "median": float(np.median(ties)),
            "mean": float(ties.mean()),
            "max": int(ties.max()),
            "share_over_5": float(np.mean(ties > 5)),
        },
        "bytes_per_page": sum(disk.values()) / pages,
        "disk": {k: v / pages for k, v in disk.items()},
        **({f"open_{k}": v for k, v in opened.items()} if opened else {}),
        "build": build_info,
        "params": params,
        "cold_search_s": cold_s,
        "add_one_page": added,
        "load": os.getloadavg(),
        "sweep": swept,
    }


def _row(r: dict) -> str:
    return (
        f"{r['recall5_tie']:.3f} / {r['recall5_strict']:.3f} | {r['candidate_tie']:.3f} | "
        f"{100 * r['drift_p99']:.2f} % | "
        f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="neartie", help="which synthetic pages (see Topics)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nprobe", type=int)
    ap.add_argument("--candidates", type=int)
    ap.add_argument("--missing", choices=["zero", "next"])
    ap.add_argument(
        "--threads", type=int, help="Searcher(threads=...): FAISS and rerank threads (default: OMP_NUM_THREADS)"
    )
    ap.add_argument(
        "--add-one-page",
        type=int,
        default=0,
        metavar="N",
        help="also time N one-page add + commit calls (new process, on a hard-linked copy of the index)",
    )
    ap.add_argument("--add-one-only", action="store_true", help="only the --add-one-page measurement (default 3)")
    ap.add_argument(
        "--sweep",
        nargs="*",
        default=[],
        metavar="NPROBE,CANDIDATES[,MISSING]",
        help="also measure these settings (`--runs` runs each)",
    )
    ap.add_argument("--no-cold", action="store_true", help="skip the new-process open and cold-search measurements")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--build-only", action="store_true", help="build (or finish) the indexes, measure nothing")
    ap.add_argument(
        "--exact-only", action="store_true", help="compute (and cache) the exact scores of a fresh build's pages only"
    )
    ap.add_argument("--partial", action="store_true", help="measure the index as it is, even if not fully built")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    for n in args.sizes:
        if args.exact_only:
            gen = CORPORA[args.corpus]()
            exact_scores(index_folder(args.corpus, n), np.arange(n), gen, gen.queries(n, args.queries)[0])
            continue
        if args.add_one_only:
            folder = index_folder(args.corpus, n)
            with Index.open(folder) as ix:
                n_built = len(ix.snapshot().pages)
            added = add_one_page(folder, CORPORA[args.corpus](), n_built, args.add_one_page or 3)
            print(json.dumps({"pages": n_built, **added, "load": os.getloadavg()}))
            continue
        if args.build_only:
            folder = index_folder(args.corpus, n)
            info = build(n, folder, CORPORA[args.corpus]())
            (folder.parent / f"{folder.name}.build.json").write_text(json.dumps(info))
            print(json.dumps({"pages": n, **info}))
            continue
        sweep = []
        for item in args.sweep:
            parts = item.split(",")
            sweep.append((int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else "next"))
        params = {
            k: v
            for k, v in (
                ("nprobe", args.nprobe),
                ("candidates", args.candidates),
                ("missing", args.missing),
                ("threads", args.threads),
            )
            if v is not None
        }
        res = run_size(
            args.corpus,
            n,
            args.queries,
            args.runs,
            params,
            sweep,
            cold=not args.no_cold,
            partial=args.partial,
            add_one=args.add_one_page,
        )
        if args.json:
            print(json.dumps(res))
            continue
        d = res["disk"]
        t = res["near_tied"]
        print(
            f"\n## {res['corpus']}: {res['pages']:,} pages ({res['tokens_per_page']:.0f} tokens/page), "
            f"params {res['params'] or 'default'}"
        )
        print("| metric | value |\n|---|---|")
        print(
            f"| search p50 / p95 (after embedding) | {res['p50_ms']:.1f} ms / {res['p95_ms']:.1f} ms (p50 per "
            f"run: {res['p50_runs_ms']}) |"
        )
        print(
            "| recall@5 vs exact float32 MaxSim: tie-tolerant / strict | "
            f"{res['recall5_tie']:.3f} / {res['recall5_strict']:.3f}"
            f" (strict: random queries {res['recall5_strict_random']}, others {res['recall5_strict_others']:.3f});"
            f" target page first {res['target_first']} |"
        )
        print(f"| candidates holding 5 pages within 1 % of the exact 5th | {res['candidate_tie']:.3f} |")
        print(
            f"| candidate stage alone (FAISS coarse search + page lists), p50 | {res['candidates_p50_ms']:.1f} ms "
            f"for {res['n_candidates']} candidates |"
        )
        print(
            "| near-tied set (pages within 1 % of the exact 5th score) | "
            f"median {t['median']:.0f}, mean {t['mean']:.1f}, "
            f"max {t['max']}; {100 * t['share_over_5']:.0f} % of queries have more than 5 |"
        )
        print(f"| score drift p99 (reported vs exact float32) | {100 * res['drift_p99']:.2f} % |")
        print(
            f"| bytes per page | {res['bytes_per_page']:,.0f} (vectors {d['vectors']:,.0f}, "
            f"page lists {d['ivf']:,.0f}, "
            f"catalog {d['catalog']:,.0f}, centroids {d['codebook']:,.0f}) |"
        )
        if "open_import_s" in res:
            print(
                f"| open (new process) | import {res['open_import_s'] * 1000:.0f} ms, Index.open + "
                f"snapshot {res['open_open_snapshot_s'] * 1000:.0f} ms, first "
                f"search {res['open_first_search_s'] * 1000:.0f} ms |"
            )
        if res["cold_search_s"]:
            c = np.array(res["cold_search_s"]) * 1000
            print(
                "| cold: 8 searches in a new process after evicting the index from the page cache | "
                f"median {np.median(c):.0f} ms, first {c[0]:.0f} ms, max {c.max():.0f} ms |"
            )
        a = res["add_one_page"]
        if a:
            print(
                f"| add one page + commit (new process, `colrag.open_index`) | "
                f"{', '.join(f'{x * 1000:.0f}' for x in a['add_commit_s'])} ms "
                f"(open {a['open_s'] * 1000:.0f} ms, import {a['import_s'] * 1000:.0f} ms) |"
            )
        b = res["build"]
        if b:
            print(
                f"| build | {b.get('build_s', 0):.0f} s (page lists {b.get('ivf_build_s', 0):.1f} s), max "
                f"RSS {b.get('max_rss_mb', 0):.0f} MB |"
            )
        print(f"| load average (1, 5, 15 min) after | {', '.join(f'{x:.2f}' for x in res['load'])} |")
        if res["sweep"]:
            print(
                "\n| nprobe | candidates | missing | recall@5 tie / strict | candidates' tie recall | drift p99 "
                "| p50 / p95 |"
                "\n|---|---|---|---|---|---|---|"
            )
            for row in res["sweep"]:
                print(f"| {row['nprobe']} | {row['candidates']} | {row['missing']} | {_row(row)} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
