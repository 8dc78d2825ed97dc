"""`colrag eval DATASET`: nDCG, recall, MRR and search latency on a labelled dataset (docs/EVAL.md)."""

from __future__ import annotations

import gc
import json
import re
import shutil
import tempfile
from pathlib import Path

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .common import load_retriever
from .options import MODELS_DIR_OPTION, RETRIEVER_OPTION, THREADS_OPTION, password_option
from .output import printable
from .progress import ProgressLine


def _default_index_name(dataset_root: Path, bundle_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", dataset_root.resolve().name).strip("-")[:40] or "dataset"
    return f"eval-{slug}-{bundle_id[:12]}"


@app.command("eval")
def eval_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder: corpus/, queries.jsonl, qrels.tsv."),
    retriever: Path | None = RETRIEVER_OPTION,
    compare: Path | None = typer.Option(
        None,
        "--compare",
        metavar="BUNDLE",
        help="A second retriever bundle to evaluate on the same dataset "
        "(e.g. the int8 one against an fp32 --retriever): "
        "metrics side by side and the queries whose first relevant page moved.",
    ),
    index: str | None = typer.Option(
        None,
        "--index",
        help="Index (name or folder) to build or reuse for the corpus \\[default: eval-<dataset>-<bundle id> under "
        "$COLRAG_HOME/indexes, kept so that the next run embeds nothing again]. Not with --compare.",
    ),
    temporary: bool = typer.Option(False, "--temporary", help="Index into a temporary folder, deleted when done."),
    models_dir: Path | None = MODELS_DIR_OPTION,
    threads: int | None = THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    password: str | None = password_option("corpus PDFs"),
    changes: int = typer.Option(
        20, "--changes", min=0, help="With --compare: how many rank changes to list (largest first)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full report (per-query ranks included) as JSON."),
) -> None:
    """Measure retrieval on a labelled dataset: nDCG@5, nDCG@10, recall@1/5/10, MRR@10 and search latency.

    The corpus is indexed first (incrementally: a kept index is reused, only new or changed
    files are embedded), then every query with a relevant page is searched.

    DATASET holds corpus/ (PDFs, PNG/JPEG page images), queries.jsonl ({"_id", "text"} per line) and
    qrels.tsv (query-id, corpus-id, score; a corpus id is <file name>#<page>, 1-based): the BEIR / ViDoRe
    layout, see docs/EVAL.md.
    """
    from ..errors import InputError
    from ..eval import METRICS, evaluate, index_corpus, load_dataset, rank_changes
    from ..paths import index_dir

    if compare is not None and index is not None:
        raise InputError(
            "--index names one index, and --compare needs one per bundle: leave --index out (or use --temporary)"
        )
    if temporary and index is not None:
        raise InputError("--temporary and --index exclude each other")
    data = load_dataset(dataset)
    skipped = len(data.queries) - len(data.judged_queries)
    if skipped:
        typer.echo(
            f"note: {skipped} quer{'ies' if skipped != 1 else 'y'} without a relevant page in qrels.tsv skipped",
            err=True,
        )
    bundles = [retriever] + ([compare] if compare is not None else [])
    scratch = Path(tempfile.mkdtemp(prefix="colrag-eval-")) if temporary else None
    runs = []
    try:
        for n, bundle in enumerate(bundles):
            model = load_retriever(bundle, models_dir, threads, backend, precision)
            if scratch is not None:
                target = scratch / f"index-{n}"
            else:
                target = index_dir(index or _default_index_name(data.root, model.bundle_id))
            typer.echo(f"index {printable(target)}", err=True)
            report = index_corpus(data, model, target, progress=ProgressLine(), password=password)
            for f in report.failures:
                typer.echo(f"failed: {printable(f)}", err=True)
            bundle_path = str(bundle) if bundle is not None else None
            runs.append(evaluate(data, model, target, indexed_pages=report.pages, bundle_path=bundle_path))
            del model
            gc.collect()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    if as_json:
        from ..eval import report_dict

        typer.echo(json.dumps(report_dict(data, runs), indent=2, ensure_ascii=False))
        return
    typer.echo(
        f"dataset  {data.root}: {len(data.judged_queries)} queries, {runs[0].pages} pages in {len(data.files)} files"
    )
    labels = ["A", "B"] if len(runs) == 2 else [""]
    for label, run in zip(labels, runs, strict=True):
        prefix = f"{label}  " if label else ""
        typer.echo(
            f"{prefix}retriever {run.retriever['name']} (bundle {run.retriever['bundle_id'][:12]}), index {run.index}"
        )
    shown = {m: m.replace("ndcg", "nDCG").replace("mrr", "MRR") for m in METRICS}
    width = max(len(m) for m in METRICS)
    header = (
        " " * width
        + "".join(f"{x:>10}" for x in (labels if len(runs) == 2 else ["score"]))
        + ("     B - A" if len(runs) == 2 else "")
    )
    typer.echo(header)
    for m in METRICS:
        cells = "".join(f"{r.metrics[m]:>10.4f}" for r in runs)
        delta = f"{runs[1].metrics[m] - runs[0].metrics[m]:>+10.4f}" if len(runs) == 2 else ""
        typer.echo(f"{shown[m]:<{width}}{cells}{delta}")
    for label, run in zip(labels, runs, strict=True):
        who = f" ({label})" if label else ""
        typer.echo(
            f"search latency{who}: p50 {run.p50_ms:.1f} ms, p95 {run.p95_ms:.1f} ms per query "
            "(query embedding included)"
        )
    if len(runs) == 2:
        moved = rank_changes(runs[0], runs[1])
        typer.echo(
            f"first relevant page moved for {len(moved)} of {len(runs[0].queries)} queries"
            + (":" if moved and changes else "")
        )
        for c in moved[:changes]:
            a = c.rank_a if c.rank_a is not None else "-"
            b = c.rank_b if c.rank_b is not None else "-"
            typer.echo(f"  {c.query_id}: rank {a} -> {b}  {c.text[:80]!r}")
