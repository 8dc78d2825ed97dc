"""`colrag eval`: metric code against hand-computed values, the dataset format, and the command end to end."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from colrag.errors import InputError
from colrag.eval import (
    METRICS,
    first_relevant_rank,
    load_dataset,
    mean_metrics,
    parse_corpus_id,
    query_metrics,
    rank_changes,
    tie_groups,
)

ROOT = Path(__file__).resolve().parents[1]
L3, L5, L6, L7 = 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(6), 1 / math.log2(7)  # discounts at ranks 2, 4, 5, 6


def ranking(*pairs):
    return [(c, s) for c, s in pairs]


# -- metrics, by hand --------------------------------------------------------------------------


def test_one_relevant_page_at_rank_3():
    m = query_metrics(ranking(("x", 0.9), ("y", 0.8), ("r", 0.7), ("z", 0.6)), {"r": 1})
    assert m == pytest.approx(
        {"ndcg@5": 0.5, "ndcg@10": 0.5, "recall@1": 0.0, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 1 / 3}
    )


def test_two_relevant_pages():
    m = query_metrics(ranking(("a", 0.9), ("x", 0.8), ("y", 0.7), ("b", 0.6)), {"a": 1, "b": 1})
    # DCG = 1 + 1/log2(5) = 1.430677; IDCG = 1 + 1/log2(3) = 1.630930
    assert m["ndcg@5"] == pytest.approx(0.877215, abs=1e-6)
    assert m["recall@1"] == 0.5 and m["recall@5"] == 1.0 and m["mrr@10"] == 1.0


def test_graded_relevance_uses_the_score_as_gain():
    m = query_metrics(ranking(("b", 0.9), ("a", 0.8)), {"a": 2, "b": 1})
    # DCG = 1 + 2/log2(3) = 2.261860; IDCG = 2 + 1/log2(3) = 2.630930
    assert m["ndcg@5"] == pytest.approx(0.859719, abs=1e-6)
    assert m["ndcg@10"] == m["ndcg@5"] and m["recall@1"] == 0.5


def test_ties_give_the_expected_value_over_orderings():
    # three pages tied at the top, one relevant: each position is equally likely
    m = query_metrics(ranking(("x", 0.5), ("r", 0.5), ("y", 0.5), ("z", 0.1)), {"r": 1})
    assert m["ndcg@5"] == pytest.approx((1 + L3 + 0.5) / 3)  # 0.710310
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@5"] == 1.0
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)  # 0.611111
    # the order the tied pages came in does not matter
    assert query_metrics(ranking(("r", 0.5), ("x", 0.5), ("y", 0.5), ("z", 0.1)), {"r": 1}) == m

    # two relevant among three tied: first relevant at 1 with p 2/3, at 2 with p 1/3
    m = query_metrics(ranking(("a", 0.5), ("x", 0.5), ("b", 0.5)), {"a": 1, "b": 1})
    assert m["mrr@10"] == pytest.approx(2 / 3 + 1 / 6)
    assert m["ndcg@5"] == pytest.approx((2 / 3) * (1 + L3 + 0.5) / (1 + L3))  # 0.871049
    assert m["recall@1"] == pytest.approx(1 / 3)


def test_a_tie_across_the_cut_off():
    # ranks 1-4 distinct and not relevant; ranks 5-6 tied, one of them relevant
    pages = ranking(("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("r", 0.5), ("e", 0.5), ("f", 0.1))
    m = query_metrics(pages, {"r": 1})
    assert m["recall@5"] == 0.5 and m["recall@10"] == 1.0
    assert m["ndcg@5"] == pytest.approx(0.5 * L6)  # 0.193426
    assert m["ndcg@10"] == pytest.approx(0.5 * (L6 + L7))  # 0.371530
    assert m["mrr@10"] == pytest.approx(0.5 / 5 + 0.5 / 6)


def test_not_relevant_not_found_and_too_deep():
    assert set(query_metrics(ranking(("x", 0.9), ("z", 0.8)), {"r": 1, "x": 0}).values()) == {0.0}
    deep = ranking(*[(f"n{i}", 1.0 - i / 100) for i in range(10)], ("r", 0.5))
    m = query_metrics(deep, {"r": 1})
    assert m["mrr@10"] == 0.0 and m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0
    with pytest.raises(ValueError):
        query_metrics(deep, {"r": 0})


def _deterministic(ranked_ids, qrels):
    """The textbook metrics of one fixed ordering (no ties)."""
    gains = [qrels.get(c, 0) for c in ranked_ids]
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)
    n_rel = len(ideal)
    out = {}
    for k in (5, 10):
        dcg = sum(g / math.log2(p + 2) for p, g in enumerate(gains[:k]))
        out[f"ndcg@{k}"] = dcg / sum(g / math.log2(p + 2) for p, g in enumerate(ideal[:k]))
    for k in (1, 5, 10):
        out[f"recall@{k}"] = sum(1 for g in gains[:k] if g > 0) / n_rel
    first = next((p for p, g in enumerate(gains[:10]) if g > 0), None)
    out["mrr@10"] = 0.0 if first is None else 1 / (first + 1)
    return out


def test_tie_handling_equals_the_average_over_every_ordering():
    pages = ranking(
        ("a", 0.9),
        ("b", 0.7),
        ("c", 0.7),
        ("d", 0.7),
        ("e", 0.7),
        ("f", 0.5),
        ("g", 0.5),
        ("h", 0.3),
        ("i", 0.3),
        ("j", 0.3),
        ("k", 0.2),
        ("l", 0.2),
    )
    qrels = {"c": 2, "e": 1, "g": 1, "k": 3, "zz": 1}
    groups = tie_groups(pages)
    assert [len(g) for g in groups] == [1, 4, 2, 3, 2]
    orders = [
        list(itertools.chain.from_iterable(p))
        for p in itertools.product(*[list(map(list, itertools.permutations(g))) for g in groups])
    ]
    want = {m: sum(_deterministic(o, qrels)[m] for o in orders) / len(orders) for m in METRICS}
    assert query_metrics(pages, qrels) == pytest.approx(want)


def test_first_relevant_rank_and_means():
    pages = ranking(("a", 0.9), ("b", 0.7), ("r", 0.7), ("s", 0.1))
    assert first_relevant_rank(pages, {"r": 1}) == 2  # one page strictly above it
    assert first_relevant_rank(pages, {"s": 1}) == 4
    assert first_relevant_rank(pages, {"zz": 1}) is None
    assert mean_metrics([dict.fromkeys(METRICS, 1.0), dict.fromkeys(METRICS, 0.0)]) == dict.fromkeys(METRICS, 0.5)


def test_rank_changes_sorted_by_move():
    from colrag.eval import EvalRun, QueryResult

    def run(ranks):
        return EvalRun({}, "", 0, 0, {}, [], [QueryResult(q, q, {}, r, []) for q, r in ranks.items()])

    moved = rank_changes(run({"q1": 1, "q2": 3, "q3": 2, "q4": None}), run({"q1": 1, "q2": 1, "q3": 7, "q4": 4}))
    assert [(c.query_id, c.rank_a, c.rank_b) for c in moved] == [("q4", None, 4), ("q3", 2, 7), ("q2", 3, 1)]


# -- the dataset format -------------------------------------------------------------------------


def write_dataset(
    root: Path, files: dict[str, bytes | Path], queries: list[dict], qrels: list[str], header: bool = True
) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for name, content in files.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy(content, corpus / name)
        else:
            (corpus / name).write_bytes(content)
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels.tsv").write_text(
        ("query-id\tcorpus-id\tscore\n" if header else "") + "".join(line + "\n" for line in qrels)
    )
    return root


def test_parse_corpus_id():
    assert parse_corpus_id("report.pdf#3") == ("report.pdf", 3)
    assert parse_corpus_id("sub/a#b.pdf#12") == ("sub/a#b.pdf", 12)
    for bad in ("report.pdf", "report.pdf#0", "report.pdf#x", "#2"):
        with pytest.raises(InputError):
            parse_corpus_id(bad)


def test_load_dataset_reads_the_beir_layout(tmp_path):
    ds = write_dataset(
        tmp_path / "ds",
        {"a.pdf": b"%PDF", "sub/b.png": b"png", "notes.txt": b"x"},
        [{"_id": "q1", "text": "revenue?"}, {"_id": 2, "text": "growth?"}, {"_id": "q3", "text": "unjudged"}],
        ["q1\ta.pdf#2\t1", "2\tsub/b.png#1\t2", "2\ta.pdf#1\t0"],
    )
    data = load_dataset(ds)
    assert sorted(data.files) == ["a.pdf", "sub/b.png"]
    assert data.qrels == {"q1": {"a.pdf#2": 1.0}, "2": {"sub/b.png#1": 2.0, "a.pdf#1": 0.0}}
    assert data.judged_queries == ["q1", "2"]


@pytest.mark.parametrize(
    "qrels, message",
    [
        (["q1\tmissing.pdf#1\t1"], "line 2: 'missing.pdf' is not a file of corpus/"),
        (["q9\ta.pdf#1\t1"], "line 2: query id 'q9' is not in queries.jsonl"),
        (["q1\ta.pdf\t1"], "line 2: corpus id 'a.pdf' is not <file name>#<page>"),
        (["q1\ta.pdf#1"], "line 2: expected query-id<TAB>corpus-id<TAB>score"),
        (["q1\ta.pdf#1\tlots"], "line 2: score 'lots' is not a number"),
    ],
)
def test_bad_qrels_are_one_line_with_the_line_number(tmp_path, qrels, message):
    ds = write_dataset(tmp_path / "ds", {"a.pdf": b"%PDF"}, [{"_id": "q1", "text": "x"}], qrels)
    with pytest.raises(InputError, match=re.escape(message)):
        load_dataset(ds)


def test_bad_layouts(tmp_path):
    with pytest.raises(InputError, match="no dataset folder"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "half" / "corpus").mkdir(parents=True)
    with pytest.raises(InputError, match=re.escape("lacks queries.jsonl, qrels.tsv")):
        load_dataset(tmp_path / "half")
    ds = write_dataset(tmp_path / "ds", {"a.pdf": b"%PDF"}, [], [])
    (ds / "queries.jsonl").write_text('{"_id": "q1"}\n')
    with pytest.raises(InputError, match="line 1"):
        load_dataset(ds)


# -- end to end, with the tiny retriever ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(pdf_dir, tmp_path_factory):
    """Three real PDFs (12 pages) and a page image from ../shared/data/pdfs; five queries, one unjudged."""
    import pymupdf

    root = tmp_path_factory.mktemp("eval") / "tinyset"
    png = root.parent / "chart-p1.png"
    with pymupdf.open(pdf_dir / "01_chart_paper_tracemonkey.pdf") as doc:
        doc[0].get_pixmap(dpi=40).save(png)
    return write_dataset(
        root,
        {
            "usda.pdf": pdf_dir / "03_chart_usda_ag_energy_roundup.pdf",
            "nics.pdf": pdf_dir / "12_rotated90_nics_table.pdf",
            "tiny/pages.pdf": pdf_dir / "21_tiny_pages_3x3pt.pdf",
            "chart-p1.png": png,
        },
        [
            {"_id": "q1", "text": "energy use on farms"},
            {"_id": "q2", "text": "background checks by state"},
            {"_id": "q3", "text": "trace tree compilation"},
            {"_id": "q4", "text": "no judgement for this one"},
            {"_id": "q5", "text": "the last tiny page"},
        ],
        [
            "q1\tusda.pdf#1\t1",
            "q2\tnics.pdf#1\t1",
            "q2\ttiny/pages.pdf#3\t2",
            "q3\tchart-p1.png#1\t1",
            "q5\ttiny/pages.pdf#10\t1",
            "q5\ttiny/pages.pdf#9\t0",
        ],
    )


def run_cli(cli, *args):
    from typer.testing import CliRunner

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def test_eval_end_to_end(cli, tiny_dataset, tiny_retriever_bundle):
    from colrag.paths import colrag_home

    r = run_cli(cli, "eval", tiny_dataset, "--retriever", tiny_retriever_bundle, "--threads", "1", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (
        report["schema"] == 1
        and report["command"] == "eval"
        and report["queries"] == 4
        and report["skipped_queries"] == 1
        and report["files"] == 4
    )
    (run,) = report["runs"]
    assert run["index"]["pages"] == 1 + 1 + 10 + 1 and run["indexed_pages"] == 13
    index = run["index"]["path"]
    assert Path(index).parent == colrag_home() / "indexes" and Path(index).name.startswith("eval-tinyset-")
    assert set(run["metrics"]) == set(METRICS) and all(0.0 <= v <= 1.0 for v in run["metrics"].values())
    assert run["latency_ms"]["queries"] == 4 and 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p95"]
    per_query = {q["query_id"]: q for q in run["queries"]}
    assert sorted(per_query) == ["q1", "q2", "q3", "q5"]
    for m in METRICS:  # the reported means are the means of the per-query values
        assert run["metrics"][m] == pytest.approx(sum(q["metrics"][m] for q in per_query.values()) / 4, abs=1e-5)

    # the per-query numbers are what `colrag search` ranks on the same index, scored by hand-checked code
    corpus = tiny_dataset / "corpus"
    qrels = {
        "q2": {"nics.pdf#1": 1.0, "tiny/pages.pdf#3": 2.0},
        "q5": {"tiny/pages.pdf#10": 1.0, "tiny/pages.pdf#9": 0.0},
    }
    for qid, text in (("q2", "background checks by state"), ("q5", "the last tiny page")):
        s = run_cli(
            cli, "search", text, "--index", index, "--retriever", tiny_retriever_bundle, "--top-k", "13", "--json"
        )
        assert s.exit_code == 0, s.output
        results = json.loads(s.stdout)["results"]
        ranked = [(f"{Path(h['file']).relative_to(corpus).as_posix()}#{h['page']}", h["score"]) for h in results]
        assert len(ranked) == 13
        want = query_metrics(ranked, qrels[qid])
        assert per_query[qid]["metrics"] == pytest.approx(want, abs=1e-5)
        assert per_query[qid]["first_relevant_rank"] == first_relevant_rank(ranked, qrels[qid])

    # a second run reuses the index: nothing embedded again, same numbers
    again = json.loads(run_cli(cli, "eval", tiny_dataset, "--retriever", tiny_retriever_bundle, "--json").stdout)[
        "runs"
    ][0]
    assert again["indexed_pages"] == 0 and again["metrics"] == run["metrics"] and again["index"] == run["index"]

    # the text report
    r = run_cli(cli, "eval", tiny_dataset, "--retriever", tiny_retriever_bundle)
    assert r.exit_code == 0, r.output
    for label in (
        "nDCG@5",
        "nDCG@10",
        "recall@1",
        "recall@5",
        "recall@10",
        "MRR@10",
        "p50",
        "p95",
        "4 queries, 13 pages",
    ):
        assert label in r.stdout
    assert "1 query without a relevant page" in r.stderr


def test_eval_compares_two_bundles(cli, tiny_dataset, tiny_retriever_bundle, tiny_retriever_int8_bundle):
    r = run_cli(
        cli,
        "eval",
        tiny_dataset,
        "--retriever",
        tiny_retriever_bundle,
        "--compare",
        tiny_retriever_int8_bundle,
        "--temporary",
        "--json",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    a, b = report["runs"]
    assert a["retriever"]["bundle_id"] != b["retriever"]["bundle_id"] and a["index"]["path"] != b["index"]["path"]
    assert report["delta"] == pytest.approx({m: b["metrics"][m] - a["metrics"][m] for m in METRICS}, abs=2e-6)
    ranks_a = {q["query_id"]: q["first_relevant_rank"] for q in a["queries"]}
    ranks_b = {q["query_id"]: q["first_relevant_rank"] for q in b["queries"]}
    assert {c["query_id"] for c in report["rank_changes"]} == {q for q in ranks_a if ranks_a[q] != ranks_b[q]}
    assert not Path(a["index"]["path"]).exists() and not Path(b["index"]["path"]).exists()  # --temporary cleans up

    # the same bundle twice: nothing moves
    r = run_cli(
        cli,
        "eval",
        tiny_dataset,
        "--retriever",
        tiny_retriever_bundle,
        "--compare",
        tiny_retriever_bundle,
        "--temporary",
    )
    assert r.exit_code == 0, r.output
    assert "B - A" in r.stdout and "first relevant page moved for 0 of 4 queries" in r.stdout


def test_eval_refuses_an_index_with_other_documents(cli, tiny_dataset, tiny_retriever_bundle, tmp_path):
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo
    from colrag.vlm.retriever import Retriever
    from tests.index_helpers import make_pdf

    other = make_pdf(tmp_path / "elsewhere" / "x.pdf", 1)
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(model)) as idx:
        Indexer(idx, model).run([other])
    r = run_cli(cli, "eval", tiny_dataset, "--retriever", tiny_retriever_bundle, "--index", tmp_path / "ix")
    assert isinstance(r.exception, InputError) and "outside" in str(r.exception)


def test_eval_errors_are_one_line(tmp_path):
    ds = write_dataset(tmp_path / "ds", {"a.pdf": b"%PDF"}, [{"_id": "q1", "text": "x"}], ["q1\tb.pdf#1\t1"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COLRAG_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "colrag", "eval", str(ds)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {ds / 'qrels.tsv'} line 2: 'b.pdf' is not a file of corpus/\n"
