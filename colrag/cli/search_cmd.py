"""`colrag search`: the best pages for a question, without an answer (stdout: text or --json)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .common import is_qdrant, load_retriever
from .options import (
    INDEX_OR_QDRANT_OPTION,
    MODELS_DIR_OPTION,
    RETRIEVER_OPTION,
    THREADS_OPTION,
    password_option,
    png_out_option,
)
from .output import printable


@app.command("search")
def search_cmd(
    query: str = typer.Argument(..., help="The question or keywords."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Number of pages to return."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (docs/JSON.md)."),
    index: str | None = INDEX_OR_QDRANT_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
    threads: int | None = THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Also write, for each result, a PNG of the page with a heatmap of the image patches that matched "
        "the query (late-interaction similarity map); paths go to stderr.",
    ),
    out: Path | None = png_out_option("--explain"),
    password: str | None = password_option("PDFs (for --explain, which re-renders pages)"),
) -> None:
    """Rank the indexed pages for a query by late-interaction (MaxSim) score."""
    from ..api import open_index
    from ..errors import IndexStoreError
    from ..paths import index_dir
    from ..store.manifest import check_no_retriever

    if is_qdrant(index):  # docs/SCALE.md
        from .scale_cmd import qdrant_search

        assert index is not None
        load_args = (retriever, models_dir, threads, backend, precision)
        return qdrant_search(index, query, top_k, as_json, load_retriever, load_args)
    target = index_dir(index)
    with open_index(target, readonly=True, threads=threads) as ix:
        idx = ix.index
        check_no_retriever(target, idx.manifest)
        if not idx.snapshot().pages:
            raise IndexStoreError(f"index {target} has no pages yet: run `colrag index DIR` first")
        model = load_retriever(retriever, models_dir, threads, backend, precision)
        hits = ix.search_text(query, model, top_k)
        if explain:
            _explain_hits(idx, model, query, hits, out, password)
    if as_json:
        from ..jsonout import document, dumps, hit

        typer.echo(
            dumps(
                document(
                    "search",
                    query=query,
                    index={"path": str(target)},
                    results=[hit(h.file, h.page, h.score) for h in hits],
                )
            )
        )
        return
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank}\t{h.score:.4f}\t{printable(h.file)}\tpage {h.page}")


def _explain_hits(idx, model, query: str, hits, out: Path | None, password: str | None) -> None:
    """A heatmap PNG per hit. A file that cannot be re-rendered (moved, deleted, changed) costs
    only its own heatmaps: the others are drawn, and the file is named once with the fix."""
    import os

    from ..errors import ColragError
    from ..paths import output_dir

    folder = out or output_dir()
    unusable: dict[str, str] = {}
    for rank, h in enumerate(hits, 1):
        if h.file in unusable:
            continue
        try:
            path = _explain_hit(
                idx, model, query, h, folder / f"explain-{rank}-{Path(h.file).stem}-p{h.page}.png", password
            )
        except ColragError as exc:
            unusable[h.file] = str(exc)
            continue
        typer.echo(f"heatmap for result {rank}: {printable(path)}", err=True)
    for file, reason in unusable.items():
        if not os.path.exists(file):
            typer.echo(
                f"warning: {printable(file)} is missing (moved or deleted since it was indexed), so its pages "
                "have no heatmap: "
                f"index its new location with `colrag index DIR`, or forget it with `colrag remove {printable(file)}`",
                err=True,
            )
        else:
            typer.echo(
                f"warning: no heatmap for {printable(file)}: {reason} (re-index it with `colrag index`)", err=True
            )


def _explain_hit(idx, model, query: str, hit, out: Path, password: str | None) -> Path:
    """Re-render the hit's page exactly as it was indexed and draw its similarity map."""
    from ..errors import IndexStoreError
    from ..explain import explain_page
    from ..render import open_pdf, render_page

    snap = idx.snapshot()
    record = next((p for p in snap.pages if p.path == hit.file and p.page_no == hit.page), None)
    if record is None:
        raise IndexStoreError(f"{hit.file} page {hit.page} is no longer in the index")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_pdf(hit.file, password) as doc:
        image = render_page(doc, hit.page - 1, idx.render).image
    return explain_page(model, query, image, idx.page_vectors(snap, record), out)
