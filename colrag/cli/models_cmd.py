"""`colrag models ...`: export checkpoints to bundles, list and verify bundles."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, models_app
from ..export.quantize import DEFAULT_QUANTIZE, QUANT_SCHEMES, QUANTIZE_HELP
from .options import (
    EXPORT_VERBOSE_OPTION,
    MODEL_THREADS_OPTION,
    MODELS_DIR_OPTION,
    OPSET_OPTION,
    REPLACE_BUNDLE_OPTION,
    password_option,
)
from .output import printable

Quantize = Enum("Quantize", {q: q for q in ("none", *QUANT_SCHEMES)}, type=str)  # type: ignore[misc]
QUANTIZE_OPTION = typer.Option(DEFAULT_QUANTIZE, "--quantize", help=QUANTIZE_HELP)

export_app = typer.Typer(
    help="Export a transformers checkpoint folder to a colrag model bundle (needs the export extra: torch, "
    "transformers, onnx).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
models_app.add_typer(export_app, name="export")


@export_app.command("retriever")
def export_retriever_cmd(
    src: Path = typer.Argument(..., help="ColQwen2 checkpoint folder (e.g. a download of vidore/colqwen2-v1.0-hf)."),
    out: Path | None = typer.Option(None, "--out", help="Bundle folder to write \\[default: <models-dir>/retriever]."),
    models_dir: Path | None = MODELS_DIR_OPTION,
    opset: int = OPSET_OPTION,
    quantize: Quantize = QUANTIZE_OPTION,
    force: bool = REPLACE_BUNDLE_OPTION,
    verbose: bool = EXPORT_VERBOSE_OPTION,
) -> None:
    """Export a ColQwen2 retriever checkpoint: vision + text graphs, embedding table, tokenizer, manifest."""
    from ..export.retriever import export_retriever
    from ..paths import retriever_dir

    target = out or retriever_dir(None, models_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    export_retriever(src, target, opset=opset, quantize=Quantize(quantize).value, force=force, verbose=verbose)
    typer.echo(str(target))


def _bundles(models_dir: Path | None) -> list[Path]:
    from ..paths import models_dir as default_models_dir

    root = default_models_dir(models_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())


@models_app.command("list")
def list_cmd(
    models_dir: Path | None = MODELS_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the installed model bundles (a quick check: presence and sizes, not checksums)."""
    from ..errors import BundleError
    from ..vlm.bundle import load_manifest

    rows = []
    for path in _bundles(models_dir):
        try:
            m = load_manifest(path)
            size = sum(f["size"] for f in m["files"].values())
            rows.append(
                {
                    "path": str(path),
                    "kind": m.get("kind"),
                    "source": m.get("source"),
                    "bytes": size,
                    "ok": True,
                    "error": None,
                }
            )
        except BundleError as exc:
            rows.append({"path": str(path), "kind": None, "source": None, "bytes": 0, "ok": False, "error": str(exc)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(
            "no model bundles installed (run `colrag models install`, or `colrag models export retriever SRC`)",
            err=True,
        )
        return
    for r in rows:
        status = f"{r['bytes'] / 1e9:.2f} GB" if r["ok"] else f"BROKEN: {r['error']}"
        typer.echo(f"{printable(r['path'])}\t{r['kind']}\t{printable(r['source'])}\t{printable(status)}")


@models_app.command("verify")
def verify_cmd(
    bundles: list[Path] | None = typer.Argument(
        None, help="Bundle folders \\[default: every bundle in the models dir]."
    ),
    models_dir: Path | None = MODELS_DIR_OPTION,
) -> None:
    """Re-hash every file of each bundle against its manifest (sha256)."""
    from ..errors import BundleError
    from ..vlm.bundle import verify_bundle

    targets = list(bundles or []) or _bundles(models_dir)
    if not targets:
        raise BundleError("no model bundles to verify (run `colrag models install`, or give a bundle folder)")
    failed = 0
    for path in targets:
        try:
            m = verify_bundle(path)
            typer.echo(f"ok\t{printable(path)}\t{m.get('kind')}\t{len(m['files'])} files")
        except BundleError as exc:
            failed += 1
            typer.echo(f"FAILED\t{printable(path)}\t{printable(exc)}")
    if failed:
        raise typer.Exit(1)


@models_app.command("compare")
def compare_cmd(
    bundle_a: Path = typer.Argument(..., help="Reference bundle (e.g. an fp32 export: `--quantize none`)."),
    bundle_b: Path = typer.Argument(..., help="Bundle to check against it (e.g. the int8 one you use)."),
    inputs: list[Path] = typer.Argument(..., help="Your PDFs, folders of PDFs and/or image files to compare on."),
    pages: int = typer.Option(
        4,
        "--pages",
        min=1,
        max=200,
        help="How many pages to use (taken in turn from each document; images are held in memory, hence the cap).",
    ),
    query: list[str] | None = typer.Option(
        None,
        "--query",
        "-q",
        help="Retriever: a query to rank the pages with (repeat) \\[default: six generic report questions]. "
        "Generator: the question asked about each page \\[default: 'What does this page show?'].",
    ),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Retriever: the ranking depth whose overlap is reported."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Generator: greedy tokens per answer."),
    password: str | None = password_option("PDFs"),
    threads: int | None = MODEL_THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    backend_b: str | None = typer.Option(
        None,
        "--backend-b",
        help="Run BUNDLE_B on this backend instead of --backend (give the same bundle twice to measure a "
        "backend's drift).",
    ),
    precision_b: str | None = typer.Option(
        None, "--precision-b", help="Run BUNDLE_B at this precision instead of --precision."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Measure how far BUNDLE_B drifts from BUNDLE_A on your own pages.

    Retrievers: embedding cosine (pages, queries) and agreement of the page ranking.
    Generators: greedy answers compared token by token. Use it to check that a
    quantized bundle keeps accuracy with the real weights on your documents.
    """
    from dataclasses import asdict

    from ..compare import (
        DEFAULT_QUERIES,
        DEFAULT_QUESTION,
        Runtime,
        bundle_kind,
        compare_generators,
        compare_retrievers,
        sample_pages,
    )
    from ..render import DEFAULT_TARGET_PIXELS
    from ..vlm.constants import GENERATOR_MAX_PIXELS

    def note(message: str) -> None:
        typer.echo(message, err=True)

    kind = bundle_kind(bundle_a, bundle_b)
    runtimes: dict[str, Any] = dict(
        runtime_a=Runtime(backend, precision), runtime_b=Runtime(backend_b or backend, precision_b or precision)
    )
    target = DEFAULT_TARGET_PIXELS if kind == "retriever" else GENERATOR_MAX_PIXELS
    sample = sample_pages(inputs, pages, target, password, warn=note)
    if kind == "retriever":
        drift = compare_retrievers(
            bundle_a,
            bundle_b,
            sample,
            query or DEFAULT_QUERIES,
            top_k=top_k,
            threads=threads,
            progress=note,
            **runtimes,
        )
        if as_json:
            typer.echo(json.dumps({"kind": kind, **asdict(drift)}, indent=2))
            return
        typer.echo(f"{drift.pages} pages, {drift.queries} queries")
        typer.echo(
            f"page embeddings: cosine mean {drift.page_cosine_mean:.5f}, min {drift.page_cosine_min:.5f} "
            f"(worst page: {drift.worst_page})"
        )
        typer.echo(f"query embeddings: cosine mean {drift.query_cosine_mean:.5f}, min {drift.query_cosine_min:.5f}")
        typer.echo(
            f"ranking: same best page for {drift.top1_agreement:.0%} of queries, top-{drift.top_k} "
            f"overlap {drift.top_k_overlap:.0%}"
        )
        for d in drift.disagreements:
            typer.echo(
                f"  {d['query']!r}: A ranks {d['page_a']} first, B {d['page_b']}, which trails it "
                f"by {d['gap']:.2%} in A's scores"
            )
        return
    gen = compare_generators(
        bundle_a,
        bundle_b,
        sample,
        query or [DEFAULT_QUESTION],
        max_new_tokens=max_new_tokens,
        threads=threads,
        progress=note,
        **runtimes,
    )
    if as_json:
        typer.echo(json.dumps({"kind": kind, **gen.as_dict()}, indent=2, ensure_ascii=False))
        return
    for a in gen.answers:
        where = "identical" if a.first_difference is None else f"first difference at token {a.first_difference}"
        typer.echo(f"{a.page}: {a.question!r}: {a.equal_positions}/{a.tokens} tokens equal, {where}")
        if a.first_difference is not None:
            typer.echo(f"  A: {a.answer_a!r}\n  B: {a.answer_b!r}")
    typer.echo(
        f"{gen.identical}/{len(gen.answers)} answers identical; {gen.token_agreement:.1%} of token positions agree"
    )


@export_app.command("generator")
def export_generator_cmd(
    src: Path = typer.Argument(..., help="Qwen2-VL checkpoint folder (e.g. a download of Qwen/Qwen2-VL-2B-Instruct)."),
    out: Path | None = typer.Option(None, "--out", help="Bundle folder to write \\[default: <models-dir>/generator]."),
    models_dir: Path | None = MODELS_DIR_OPTION,
    share_vision_with: Path | None = typer.Option(
        None,
        "--share-vision-with",
        help="A retriever bundle folder: when its vision tower has the same weights, reference its vision "
        "graph instead of storing a copy.",
    ),
    opset: int = OPSET_OPTION,
    quantize: Quantize = QUANTIZE_OPTION,
    force: bool = REPLACE_BUNDLE_OPTION,
    verbose: bool = EXPORT_VERBOSE_OPTION,
) -> None:
    """Export a Qwen2-VL generator checkpoint.

    Writes the vision and decoder (KV cache) graphs, embedding table, tokenizer and manifest."""
    from ..export.generator import export_generator
    from ..paths import generator_dir

    target = out or generator_dir(None, models_dir)
    export_generator(
        src,
        target,
        share_vision_with=share_vision_with,
        opset=opset,
        quantize=Quantize(quantize).value,
        force=force,
        verbose=verbose,
    )
    typer.echo(str(target))
