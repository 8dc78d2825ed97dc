"""`colrag eval`: retrieval quality on a labelled dataset, in the BEIR / ViDoRe layout.

A package of three modules, one job each:
  colrag.eval.dataset  the dataset layout (corpus/, queries.jsonl, qrels.tsv), loaded and checked;
  colrag.eval.metrics  nDCG@k, recall@k and MRR@10 per query, ties counted as expected values;
  colrag.eval.run      indexing the corpus, searching every judged query, scoring, comparing two runs.
"""

from __future__ import annotations

from .dataset import CORPUS_DIR, QRELS_FILE, QUERIES_FILE, Dataset, corpus_id, load_dataset, parse_corpus_id
from .metrics import METRICS, first_relevant_rank, mean_metrics, percentile_ms, query_metrics, tie_groups
from .run import SEARCH_DEPTH, EvalRun, QueryResult, RankChange, evaluate, index_corpus, rank_changes, report_dict

__all__ = [
    "CORPUS_DIR",
    "METRICS",
    "QRELS_FILE",
    "QUERIES_FILE",
    "SEARCH_DEPTH",
    "Dataset",
    "EvalRun",
    "QueryResult",
    "RankChange",
    "corpus_id",
    "evaluate",
    "first_relevant_rank",
    "index_corpus",
    "load_dataset",
    "mean_metrics",
    "parse_corpus_id",
    "percentile_ms",
    "query_metrics",
    "rank_changes",
    "report_dict",
    "tie_groups",
]
