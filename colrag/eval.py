"""`colrag eval`: retrieval quality on a labelled dataset, in the BEIR / ViDoRe layout.

    DATASET/
        corpus/          PDFs and/or page images (PNG, JPEG, TIFF; also XPS, EPUB, CBZ); sub-folders allowed
        queries.jsonl    one {"_id": "q1", "text": "..."} per line
        qrels.tsv        query-id <TAB> corpus-id <TAB> score   (a header line is allowed)

A corpus id names one page: `<file name>#<page>`, the file's path relative to corpus/
(with "/" between folders) and its 1-based page number (`report.pdf#3`; an image is
`scan.png#1`). A qrels score > 0 marks the page relevant, with that gain in nDCG;
0 (or a page not listed) is not relevant. Queries without a relevant page are skipped
(as BEIR's evaluation does); the others are scored and averaged.

Metrics per query (then the mean over queries), from the ranked pages of the search:
  nDCG@k  = DCG@k / IDCG@k, DCG@k = sum over ranks p <= k of gain_p / log2(p + 1)
            (linear gain, the qrels score), IDCG@k the DCG@k of the ideal ordering
  recall@k = relevant pages in the top k / all relevant pages of the query
  MRR@10  = 1 / rank of the first relevant page in the top 10 (0 when none)
Ties: pages with exactly the same score have no order of their own, so every metric is
its expected value over all orderings of each group of tied pages (each tied position
gets the group's mean gain; recall counts a tied group's relevant pages in proportion
to the part of the group above the cut-off). Without ties this is the usual value.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .render import DOCUMENT_SUFFIXES, KINDS_TEXT

METRICS = ("ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "mrr@10")
SEARCH_DEPTH = 100  # pages ranked per query: enough for every @10 metric and for ties around rank 10
CORPUS_DIR = "corpus"
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels.tsv"


# -- the dataset -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    root: Path
    corpus: Path  # absolute
    files: dict[str, Path]  # corpus file name (relative to corpus/, "/"-separated) -> absolute path
    queries: dict[str, str]  # query id -> text, in file order
    qrels: dict[str, dict[str, float]]  # query id -> {corpus id: score}

    @property
    def judged_queries(self) -> list[str]:
        """Query ids with at least one relevant page, in queries.jsonl order."""
        return [q for q in self.queries if any(s > 0 for s in self.qrels.get(q, {}).values())]


def parse_corpus_id(corpus_id: str) -> tuple[str, int]:
    """`report.pdf#3` -> ("report.pdf", 3); InputError unless it is `<file name>#<page >= 1>`."""
    name, sep, page = corpus_id.rpartition("#")
    if not sep or not name or not page.isdigit() or int(page) < 1:
        raise InputError(
            f"corpus id {corpus_id!r} is not <file name>#<page> with a 1-based page number (e.g. report.pdf#3)"
        )
    return name, int(page)


def corpus_id(name: str, page: int) -> str:
    return f"{name}#{page}"


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Read and check a dataset folder; every problem is one InputError line naming the file and line."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(
            f"no dataset folder at {root}: expected {CORPUS_DIR}/, {QUERIES_FILE} and {QRELS_FILE} in it "
            "(see docs/EVAL.md)"
        )
    corpus = root / CORPUS_DIR
    missing = [
        n
        for n, p in ((CORPUS_DIR + "/", corpus), (QUERIES_FILE, root / QUERIES_FILE), (QRELS_FILE, root / QRELS_FILE))
        if not p.exists()
    ]
    if missing:
        raise InputError(f"{root} is not an eval dataset: it lacks {', '.join(missing)} (see docs/EVAL.md)")
    if not corpus.is_dir():
        raise InputError(f"{corpus} is not a folder")
    corpus = Path(os.path.abspath(corpus))
    files: dict[str, Path] = {}
    for dirpath, dirs, names in os.walk(corpus):
        dirs.sort()
        for n in sorted(names):
            if n.lower().endswith(DOCUMENT_SUFFIXES):
                path = Path(dirpath) / n
                files[path.relative_to(corpus).as_posix()] = path
    if not files:
        raise InputError(f"{corpus} holds no PDF or page image (colrag indexes {KINDS_TEXT})")
    queries = _read_queries(root / QUERIES_FILE)
    qrels = _read_qrels(root / QRELS_FILE, queries, files)
    return Dataset(root=root, corpus=corpus, files=files, queries=queries, qrels=qrels)


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("_id") in (None, ""):
                raise InputError(f'{path} line {n}: expected {{"_id": "...", "text": "..."}}')
            qid = str(row["_id"])
            if qid in queries:
                raise InputError(f"{path} line {n}: query id {qid!r} appears twice")
            if not row["text"].strip():
                raise InputError(f"{path} line {n}: query {qid!r} has an empty text")
            queries[qid] = row["text"]
    if not queries:
        raise InputError(f"{path} holds no query")
    return queries


def _read_qrels(path: Path, queries: dict[str, str], files: dict[str, Path]) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if n == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue  # the BEIR header
            if len(parts) != 3:
                raise InputError(
                    f"{path} line {n}: expected query-id<TAB>corpus-id<TAB>score, got {len(parts)} field(s)"
                )
            qid, cid, raw_score = (p.strip() for p in parts)
            try:
                score = float(raw_score)
            except ValueError:
                raise InputError(f"{path} line {n}: score {raw_score!r} is not a number") from None
            if not math.isfinite(score) or score < 0:
                raise InputError(f"{path} line {n}: score {raw_score!r} must be a number >= 0")
            if qid not in queries:
                raise InputError(f"{path} line {n}: query id {qid!r} is not in {QUERIES_FILE}")
            try:
                name, _ = parse_corpus_id(cid)
            except InputError as exc:
                raise InputError(f"{path} line {n}: {exc}") from None
            if name not in files:
                raise InputError(f"{path} line {n}: {name!r} is not a file of {CORPUS_DIR}/")
            qrels.setdefault(qid, {})[cid] = score
    return qrels


# -- metrics ---------------------------------------------------------------------------


def _discount(rank0: int) -> float:
    return 1.0 / math.log2(rank0 + 2)


def tie_groups(ranked: Sequence[tuple[str, float]]) -> list[list[str]]:
    """Consecutive runs of equal score in a best-first ranking: [[corpus id, ...], ...]."""
    groups: list[list[str]] = []
    last: float | None = None
    for cid, score in ranked:
        if groups and score == last:
            groups[-1].append(cid)
        else:
            groups.append([cid])
        last = score
    return groups


def query_metrics(ranked: Sequence[tuple[str, float]], qrels: dict[str, float]) -> dict[str, float]:
    """METRICS for one query: `ranked` is [(corpus id, score)] best first, `qrels` {corpus id: score}.

    Expected values over the orderings of tied pages (see the module doc)."""
    gains = {cid: s for cid, s in qrels.items() if s > 0}
    n_rel = len(gains)
    if not n_rel:
        raise ValueError("a query without a relevant page has no metrics")
    ideal = sorted(gains.values(), reverse=True)
    dcg = {5: 0.0, 10: 0.0}
    found = {1: 0.0, 5: 0.0, 10: 0.0}
    mrr = 0.0
    first_seen = False
    start = 0
    for group in tie_groups(ranked):
        n = len(group)
        rel = [gains[c] for c in group if c in gains]
        r = len(rel)
        mean_gain = sum(rel) / n
        for k in dcg:
            dcg[k] += mean_gain * sum(_discount(p) for p in range(start, min(start + n, k)))
        for k in found:
            found[k] += r * max(0, min(start + n, k) - start) / n
        if r and not first_seen:
            first_seen = True
            # P(the group's first relevant page sits at offset j) = C(n-1-j, r-1) / C(n, r)
            total = math.comb(n, r)
            mrr = sum(math.comb(n - 1 - j, r - 1) / total / (start + j + 1) for j in range(n - r + 1) if start + j < 10)
        start += n
    out = {}
    for k in (5, 10):
        idcg = sum(g * _discount(p) for p, g in enumerate(ideal[:k]))
        out[f"ndcg@{k}"] = dcg[k] / idcg
    for k in (1, 5, 10):
        out[f"recall@{k}"] = found[k] / n_rel
    out["mrr@10"] = mrr
    return {m: out[m] for m in METRICS}


def first_relevant_rank(ranked: Sequence[tuple[str, float]], qrels: dict[str, float]) -> int | None:
    """1 + the number of pages scored strictly above the best-ranked relevant page; None if none was ranked."""
    above = 0
    for group in tie_groups(ranked):
        if any(qrels.get(c, 0) > 0 for c in group):
            return above + 1
        above += len(group)
    return None


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([q[m] for q in per_query])) if per_query else 0.0 for m in METRICS}


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, q)) if seconds else 0.0


# -- running ---------------------------------------------------------------------------


@dataclass
class QueryResult:
    query_id: str
    text: str
    metrics: dict[str, float]
    first_relevant_rank: int | None
    top: list[str]  # the first corpus ids ranked (up to 10)

    def as_dict(self) -> dict:
        return {
            "query_id": self.query_id,
            "text": self.text,
            "first_relevant_rank": self.first_relevant_rank,
            "metrics": {m: round(v, 6) for m, v in self.metrics.items()},
            "top": self.top,
        }


@dataclass
class EvalRun:
    retriever: dict  # {"name", "bundle_id", "path"}
    index: str
    pages: int
    indexed_pages: int  # pages embedded by this run (0 when the index was reused as is)
    metrics: dict[str, float]
    latency_s: list[float]
    queries: list[QueryResult] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.latency_s, 50)

    @property
    def p95_ms(self) -> float:
        return percentile_ms(self.latency_s, 95)

    def as_dict(self) -> dict:
        return {
            "retriever": self.retriever,
            "index": {"path": self.index, "pages": self.pages},
            "indexed_pages": self.indexed_pages,
            "metrics": {m: round(v, 6) for m, v in self.metrics.items()},
            "latency_ms": {"p50": round(self.p50_ms, 2), "p95": round(self.p95_ms, 2), "queries": len(self.latency_s)},
            "queries": [q.as_dict() for q in self.queries],
        }


def index_corpus(dataset: Dataset, retriever, index_path: Path, *, progress=None, password: str | None = None):
    """Bring the index at `index_path` up to date with the corpus (new or changed files embedded,
    files gone from corpus/ dropped); returns the Indexer's report.

    An index that holds documents from outside corpus/ is refused: its pages would compete
    in the ranking."""
    from .indexer import Indexer
    from .store import Index, RetrieverInfo

    with Index.open_writer(index_path, RetrieverInfo.of(retriever)) as idx:
        prefix = str(dataset.corpus) + os.sep
        wanted = {str(p) for p in dataset.files.values()}
        known = {d.path for d in idx.documents()}
        strangers = sorted(p for p in known if not p.startswith(prefix))
        if strangers:
            raise InputError(
                f"index {index_path} also holds documents from outside {dataset.corpus} (e.g. {strangers[0]}): "
                "evaluate into another --index (or leave --index out)"
            )
        gone = sorted(p for p in known if p not in wanted)
        if gone:
            idx.remove_documents(gone)
        return Indexer(idx, retriever, password=password, progress=progress).run(sorted(wanted))


def evaluate(
    dataset: Dataset,
    retriever,
    index_path: Path,
    *,
    indexed_pages: int = 0,
    depth: int = SEARCH_DEPTH,
    clock: Callable[[], float] = time.perf_counter,
    bundle_path: str | None = None,
) -> EvalRun:
    """Run every judged query against the index and score the rankings."""
    from .search import Searcher
    from .store import Index, RetrieverInfo

    with Index.open(index_path, RetrieverInfo.of(retriever)) as idx:
        snap = idx.snapshot()
        names = {}
        for page in snap.pages:
            rel = (
                Path(page.path).relative_to(dataset.corpus).as_posix()
                if page.path.startswith(str(dataset.corpus) + os.sep)
                else page.path
            )
            names[(page.path, page.page_no)] = corpus_id(rel, page.page_no)
        present = set(names.values())
        judged = dataset.judged_queries
        absent = sorted({c for q in judged for c, s in dataset.qrels[q].items() if s > 0 and c not in present})
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise InputError(
                f"qrels.tsv names relevant pages the index does not hold: {', '.join(absent[:3])}{more} "
                "(a file that failed to index, or a page number past the document's end)"
            )
        if not judged:
            raise InputError("no query has a relevant page in qrels.tsv (a score > 0): nothing to evaluate")
        searcher = Searcher(idx, retriever)
        depth = max(1, min(depth, len(snap.pages)))
        searcher.search(dataset.queries[judged[0]], depth)  # warm-up, untimed: first-call costs are not search latency
        results, latency = [], []
        for qid in judged:
            t0 = clock()
            hits = searcher.search(dataset.queries[qid], depth)
            latency.append(clock() - t0)
            ranked = [(names[(h.file, h.page)], float(h.score)) for h in hits]
            qrels = dataset.qrels[qid]
            results.append(
                QueryResult(
                    qid,
                    dataset.queries[qid],
                    query_metrics(ranked, qrels),
                    first_relevant_rank(ranked, qrels),
                    [c for c, _ in ranked[:10]],
                )
            )
        info = RetrieverInfo.of(retriever)
        return EvalRun(
            retriever={"name": info.name, "bundle_id": info.bundle_id, "path": bundle_path},
            index=str(index_path),
            pages=len(snap.pages),
            indexed_pages=indexed_pages,
            metrics=mean_metrics([r.metrics for r in results]),
            latency_s=latency,
            queries=results,
        )


@dataclass(frozen=True)
class RankChange:
    query_id: str
    text: str
    rank_a: int | None
    rank_b: int | None

    def as_dict(self) -> dict:
        return {"query_id": self.query_id, "text": self.text, "rank_a": self.rank_a, "rank_b": self.rank_b}


def rank_changes(a: EvalRun, b: EvalRun) -> list[RankChange]:
    """Queries whose first relevant page moved between run A and run B, largest moves first
    (a page that fell out of the ranking counts as rank SEARCH_DEPTH + 1)."""
    worst = SEARCH_DEPTH + 1
    by_id = {q.query_id: q for q in b.queries}
    changes = [
        RankChange(q.query_id, q.text, q.first_relevant_rank, by_id[q.query_id].first_relevant_rank)
        for q in a.queries
        if q.query_id in by_id and q.first_relevant_rank != by_id[q.query_id].first_relevant_rank
    ]
    changes.sort(key=lambda c: (-abs((c.rank_a or worst) - (c.rank_b or worst)), c.query_id))
    return changes


def report_dict(dataset: Dataset, runs: list[EvalRun]) -> dict:
    """The `colrag eval --json` document (docs/EVAL.md)."""
    from .jsonout import document

    out: dict = document(
        "eval",
        dataset=str(dataset.root),
        files=len(dataset.files),
        queries=len(dataset.judged_queries),
        skipped_queries=len(dataset.queries) - len(dataset.judged_queries),
        runs=[r.as_dict() for r in runs],
    )
    if len(runs) == 2:
        out["delta"] = {m: round(runs[1].metrics[m] - runs[0].metrics[m], 6) for m in METRICS}
        out["rank_changes"] = [c.as_dict() for c in rank_changes(runs[0], runs[1])]
    return out
