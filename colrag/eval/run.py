"""Running `colrag eval`: index the corpus, search every judged query, score and compare runs.

The dataset is colrag.eval.dataset's, the metrics colrag.eval.metrics'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .dataset import Dataset, corpus_id
from .metrics import METRICS, first_relevant_rank, mean_metrics, percentile_ms, query_metrics

SEARCH_DEPTH = 100  # pages ranked per query: enough for every @10 metric and for ties around rank 10


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
    from ..indexer import Indexer
    from ..store import Index, RetrieverInfo

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
    from ..search import Searcher
    from ..store import Index, RetrieverInfo

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
    from ..jsonout import document

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
