"""`colrag index | search | status | remove`: build and query a page index.

Results go to stdout (text or --json), progress and failures to stderr. `index` exits 0
when everything it tried was indexed, 1 when a file or page failed in this run (files that
failed before and have not changed are skipped and do not count), 2 for a usage error or
nothing to index.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .output import printable
from .progress import ProgressLine, loading

INDEX_OPTION = typer.Option(
    None,
    "--index",
    envvar="COLRAG_INDEX",
    help="Index name (a folder under $COLRAG_HOME/indexes) or path to an index folder \\[default: default].",
)
MODELS_DIR_OPTION = typer.Option(
    None,
    "--models-dir",
    envvar="COLRAG_MODELS",
    help="Folder holding the retriever/ and generator/ bundles \\[default: $COLRAG_HOME/models].",
)
RETRIEVER_OPTION = typer.Option(
    None,
    "--retriever",
    help="Retriever bundle folder to use \\[default: <models-dir>/retriever].",
)


def check_threads_option(value: int | None) -> int | None:
    """--threads is checked as it is parsed: one line above a few threads per core (colrag.runtime.check_threads)."""
    from ..runtime import check_threads

    return check_threads(value)


THREADS_OPTION = typer.Option(
    None,
    "--threads",
    min=1,
    callback=check_threads_option,
    help="CPU threads for onnxruntime, FAISS and the rerank \\[default: OMP_NUM_THREADS, else all cores]; results do not depend on it.",
)


def _load_retriever(
    retriever: Path | None,
    models_dir: Path | None,
    threads: int | None,
    backend: str | None = None,
    precision: str | None = None,
):
    from ..bundle import MANIFEST
    from ..errors import BundleError
    from ..paths import retriever_dir
    from ..runtime import check_threads

    check_threads(threads)
    bundle = retriever_dir(retriever, models_dir)
    if not (bundle / MANIFEST).is_file():
        raise BundleError(
            f"no retriever bundle at {bundle}: run `colrag models install`, or "
            f"`colrag models export retriever SRC --out {bundle}` (or pass --retriever DIR)"
        )
    if threads:  # FAISS's OpenMP threads for indexing (centroid assignment); searches set theirs per call
        import faiss

        faiss.omp_set_num_threads(threads)
    from ..retriever import Retriever

    with loading("the retriever"):
        return Retriever.load(bundle, threads=threads, backend=backend, precision=precision)


def _is_qdrant(index: str | None) -> bool:
    """--index qdrant+edge:PATH or qdrant:URL (search, status, remove and export-index take it)."""
    return bool(index) and str(index).startswith(("qdrant:", "qdrant+edge:"))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@app.command("index")
def index_cmd(
    paths: list[Path] = typer.Argument(
        ...,
        help="Files and folders (searched recursively for PDF, XPS, EPUB, CBZ, PNG, JPEG and TIFF files).",
    ),
    index: str | None = INDEX_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
    threads: int | None = THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    password: str | None = typer.Option(
        None,
        "--password",
        envvar="COLRAG_PDF_PASSWORD",
        help="Password for encrypted PDFs (tried on every encrypted file; the env var keeps it out of `ps`).",
    ),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Try again the files and pages that failed in an earlier run (they are skipped while unchanged).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run's report as JSON on stdout (docs/JSON.md)."),
    page_features: bool = typer.Option(
        True,
        "--page-features/--no-page-features",
        help="Also keep each page's vision-tower output (~2.4 MB per page at float16) so that `colrag ask` answers "
        "an indexed page without rendering it or running the vision tower again.",
    ),
) -> None:
    """Render, embed and store every page of the given files. Incremental: unchanged files are
    skipped, changed ones re-indexed, files gone from the given folders dropped. Safe to
    interrupt: run it again to resume.

    Indexes PDF, XPS, EPUB and CBZ documents and PNG, JPEG and TIFF images (one page each).
    A file that failed before and has not changed is skipped and listed ("failed before");
    --retry-failed tries it again.

    Exit code: 0 when everything this run tried was indexed; 1 when a file or page failed in
    this run (they are listed; known failures skipped do not count); 2 for a usage error or
    nothing to index (no such path, no file of a kind colrag indexes)."""
    from ..errors import InputError
    from ..indexer import Indexer
    from ..paths import index_dir
    from ..render import KINDS_TEXT, find_pdfs
    from .progress import plural

    target = index_dir(index)
    if not find_pdfs(paths):  # also: a missing path fails now, before the retriever loads
        where = ", ".join(str(p) for p in paths)
        raise InputError(f"no PDF found in {where} (colrag indexes {KINDS_TEXT})")
    from ..store import Index, RetrieverInfo

    model = _load_retriever(retriever, models_dir, threads, backend, precision)
    progress = ProgressLine()
    with Index.open_writer(target, RetrieverInfo.of(model), page_features=page_features) as idx:
        for note in idx.repair_notes:
            typer.echo(f"repair: {note}", err=True)
        try:
            report = Indexer(idx, model, password=password, progress=progress, retry_failed=retry_failed).run(paths)
        except KeyboardInterrupt:
            typer.echo("interrupted: the pages committed so far are kept; run the same command to resume", err=True)
            raise typer.Exit(130) from None
        stats = idx.stats()
    for w in report.warnings:
        typer.echo(
            f"warning: {printable(w.where)} rendered with errors, content may be missing: {printable(w.reason)}",
            err=True,
        )
    for folder, reason in report.unreadable_folders:
        typer.echo(f"warning: cannot read folder {printable(folder)}: {reason}", err=True)
    if report.kept_files:
        typer.echo(
            f"warning: kept {report.kept_files} indexed document{'s' if report.kept_files != 1 else ''} whose folder "
            "could not be read or is empty (an unmounted share?); `colrag remove PATH` forgets them if they are gone for good",
            err=True,
        )
    known = [f for f in report.failures if f.previous]
    for f in known:
        typer.echo(f"skipped {printable(f.where)} (failed before: {printable(f.reason)})", err=True)
    for f in report.new_failures:
        typer.echo(f"failed: {printable(f)}", err=True)
    if known and not as_json:
        typer.echo(
            f"{plural(len(known), 'file or page', 'files or pages')} skipped that failed before "
            "(unchanged since): --retry-failed tries them again",
            err=True,
        )
    if as_json:
        from ..jsonout import document, dumps, failure

        typer.echo(
            dumps(
                document(
                    "index",
                    index={"path": str(target), "documents": stats["documents"], "pages": stats["pages"]},
                    run={
                        "files": report.files,
                        "indexed_files": report.indexed_files,
                        "unchanged_files": report.skipped_files,
                        "removed_files": report.removed_files,
                        "kept_files": report.kept_files,
                        "unreadable_folders": [{"folder": f, "reason": r} for f, r in report.unreadable_folders],
                        "pages": report.pages,
                        "seconds": round(report.seconds, 3),
                    },
                    failures=[failure(f.path, f.page, f.reason) for f in report.new_failures],
                    known_failures=[failure(f.path, f.page, f.reason) for f in known],
                    warnings=[failure(w.path, w.page, w.reason) for w in report.warnings],
                )
            )
        )
    else:
        failed = f"{len(report.new_failures)} failed" + (
            f" ({len(known)} more failed before, skipped)" if known else ""
        )
        typer.echo(
            f"{plural(report.pages, 'page')} from {plural(report.indexed_files, 'file')} indexed, "
            f"{report.skipped_files} unchanged, {report.removed_files} removed, "
            + (f"{report.kept_files} kept (folder unreadable), " if report.kept_files else "")
            + f"{failed}, in {report.seconds:.1f}s; "
            f"index {printable(target)}: {plural(stats['documents'], 'document')}, {plural(stats['pages'], 'page')}"
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command("search")
def search_cmd(
    query: str = typer.Argument(..., help="The question or keywords."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Number of pages to return."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (docs/JSON.md)."),
    index: str | None = INDEX_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
    threads: int | None = THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Also write, for each result, a PNG of the page with a heatmap of the image patches that matched the query (late-interaction similarity map); paths go to stderr.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="DIR",
        file_okay=False,
        help="Folder for the --explain PNGs \\[default: $COLRAG_HOME/out; a file of the same name is replaced].",
    ),
    password: str | None = typer.Option(
        None,
        "--password",
        envvar="COLRAG_PDF_PASSWORD",
        help="Password of encrypted PDFs (for --explain, which re-renders pages).",
    ),
) -> None:
    """Rank the indexed pages for a query by late-interaction (MaxSim) score."""
    from ..api import open_index
    from ..errors import IndexStoreError
    from ..paths import index_dir
    from ..store.manifest import check_no_retriever

    if _is_qdrant(index):  # docs/SCALE.md
        from .scale_cmd import qdrant_search

        assert index is not None
        load_args = (retriever, models_dir, threads, backend, precision)
        return qdrant_search(index, query, top_k, as_json, _load_retriever, load_args)
    target = index_dir(index)
    with open_index(target, readonly=True, threads=threads) as ix:
        idx = ix.index
        check_no_retriever(target, idx.manifest)
        if not idx.snapshot().pages:
            raise IndexStoreError(f"index {target} has no pages yet: run `colrag index DIR` first")
        model = _load_retriever(retriever, models_dir, threads, backend, precision)
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
                f"warning: {printable(file)} is missing (moved or deleted since it was indexed), so its pages have no heatmap: "
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


def _bundle_in_use(built: dict, retriever: Path | None, models_dir: Path | None) -> tuple[str | None, str]:
    """(path of the retriever bundle that search would use, if it is the one that built the index; a line saying so)."""
    from ..bundle import bundle_id, load_manifest
    from ..errors import BundleError
    from ..paths import retriever_dir

    bundle = retriever_dir(retriever, models_dir)
    short = str(built.get("bundle_id", "?"))[:12]
    origin = f"exported from {built.get('name')}" if built.get("name") else "origin unknown"
    try:
        installed = bundle_id(load_manifest(bundle, "retriever"))
    except BundleError:
        return (
            None,
            f"bundle {short} ({origin}); no usable retriever bundle at {bundle}: install or pass the one that built it",
        )
    if installed == built.get("bundle_id"):
        return str(bundle), f"{bundle} (bundle {short}, {origin})"
    return None, (
        f"bundle {short} ({origin}); the retriever at {bundle} is another bundle ({installed[:12]}): "
        "search and ask need the one that built the index"
    )


@app.command("status")
def status_cmd(
    index: str | None = INDEX_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON (docs/JSON.md)."),
    check: bool = typer.Option(
        False, "--check", help="Also verify catalog <-> vectors consistency (reads every vector)."
    ),
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
) -> None:
    """Show what an index holds: documents, pages, failures, size on disk, and which retriever bundle built it."""
    from ..paths import index_dir
    from ..store import Index

    if _is_qdrant(index):  # docs/SCALE.md
        from .scale_cmd import qdrant_status

        assert index is not None
        return qdrant_status(index, as_json)
    target = index_dir(index)
    with Index.open(target) as idx:
        stats = idx.stats()
        stats["page_failures"] = [
            {"file": path, "page": page, "reason": msg}
            for path, page, kind, msg in idx.page_errors()
            if kind == "error"
        ]
        report = idx.check() if check else None
    if report is not None:
        stats["check"] = {"ok": report.ok, "problems": report.problems, "notes": report.notes}
    bundle_path, bundle_line = _bundle_in_use(stats["retriever"], retriever, models_dir)
    if as_json:
        from ..jsonout import document, dumps, failure

        counts = (
            "documents",
            "pages",
            "failed_documents",
            "failed_pages",
            "tokens",
            "bytes_on_disk",
            "vector_bytes",
            "dead_vector_bytes",
            "centroids",
            "generation",
            "pages_with_features",
            "feature_bytes",
            "feature_bytes_per_page",
            "features",
        )
        doc = document(
            "status",
            index={
                "path": stats["index"],
                **{k: stats[k] for k in counts},
                "documents_indexing": stats["documents_in_progress"],
            },
            retriever={**stats["retriever"], "path": bundle_path},
            failures=[failure(f["path"], None, f["error"]) for f in stats["failed"]]
            + [failure(f["file"], f["page"], f["reason"]) for f in stats["page_failures"]],
        )
        if report is not None:
            doc["check"] = stats["check"]
        typer.echo(dumps(doc))
    else:
        typer.echo(f"index      {printable(stats['index'])}")
        typer.echo(f"retriever  {printable(bundle_line)}")
        docs = [f"{stats['documents']} indexed", f"{stats['failed_documents']} failed"]
        if stats["documents_in_progress"]:
            docs.append(
                f"{stats['documents_in_progress']} being indexed (the next `colrag index` of its folder finishes it)"
            )
        typer.echo(f"documents  {', '.join(docs)}")
        typer.echo(f"pages      {stats['pages']} indexed, {stats['failed_pages']} failed")
        typer.echo(
            f"on disk    {_human_bytes(stats['bytes_on_disk'])} (dead vectors {_human_bytes(stats['dead_vector_bytes'])}: "
            "removed or replaced pages, reclaimed by `colrag compact`, or automatically past a quarter of the vectors)"
        )
        if stats["features"] is not None or stats["pages_with_features"]:
            typer.echo(
                f"features   {stats['pages_with_features']} of {stats['pages']} pages, {_human_bytes(stats['feature_bytes'])} "
                f"({_human_bytes(stats['feature_bytes_per_page'])} per page)"
            )
        else:
            typer.echo("features   none (pages indexed with `colrag index` from now on get them)")
        for f in stats["failed"]:
            typer.echo(f"failed     {printable(f['path'])}: {printable(f['error'])}")
        for f in stats["page_failures"]:
            typer.echo(f"failed     {printable(f['file'])} page {f['page']}: {printable(f['reason'])}")
        if report is not None:
            typer.echo("check      ok" if report.ok else "check      FAILED")
            for p in report.problems:
                typer.echo(f"problem    {printable(p)}")
    if report is not None and not report.ok:
        raise typer.Exit(1)


REMOVE_WITHOUT_ASKING = 5  # more documents than this (or every document) needs a yes


@app.command("remove")
def remove_cmd(
    paths: list[Path] = typer.Argument(..., help="Files, or folders (every indexed file under them), to forget."),
    index: str | None = INDEX_OPTION,
    yes: bool = typer.Option(
        False,
        "--yes",
        "-y",
        help=f"Do not ask before removing more than {REMOVE_WITHOUT_ASKING} documents or all of them "
        "(without a terminal, such a removal needs --yes).",
    ),
) -> None:
    """Remove documents from the index (the PDFs themselves are not touched)."""
    from ..errors import InputError
    from ..indexer import remove, remove_targets
    from ..paths import index_dir
    from ..store import Index

    if _is_qdrant(index):  # docs/SCALE.md
        from .scale_cmd import qdrant_remove

        assert index is not None
        return qdrant_remove(index, paths)
    target = index_dir(index)
    with Index.open_writer(target, None) as idx:
        targets = remove_targets(idx, paths)
        total = len({d.path for d in idx.documents()})
        everything = len(targets) > 1 and len(targets) >= total
        if not yes and (len(targets) > REMOVE_WITHOUT_ASKING or everything):
            what = f"all {len(targets)} documents" if everything else f"{len(targets)} documents"
            question = f"remove {what} from index {printable(target)}? (the PDFs themselves are not touched)"
            if not sys.stdin.isatty():
                raise InputError(f"this would remove {what} from index {printable(target)}: pass --yes to confirm")
            if not typer.confirm(question, default=False, err=True):
                typer.echo("nothing removed", err=True)
                raise typer.Exit(1)
        removed = remove(idx, paths, targets)
    for p in removed:
        typer.echo(f"removed {printable(p)}")
    if not removed:
        typer.echo("nothing to remove: no indexed file matches", err=True)
        raise typer.Exit(1)


@app.command("compact")
def compact_cmd(
    index: str | None = INDEX_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print {vector_bytes_before, vector_bytes_after} as JSON."),
) -> None:
    """Reclaim the space of removed and replaced pages' vectors (searches keep working meanwhile)."""
    from ..paths import index_dir
    from ..store import Index

    with Index.open_writer(index_dir(index), None) as idx:
        result = idx.compact()
        idx.refresh()
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"vectors: {_human_bytes(result['vector_bytes_before'])} -> {_human_bytes(result['vector_bytes_after'])}"
        )
