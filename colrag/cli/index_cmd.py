"""`colrag index`: add PDFs (and images) to a page index.

Progress and failures go to stderr, the summary to stdout (text or --json). Exits 0 when
everything it tried was indexed, 1 when a file or page failed in this run (files that
failed before and have not changed are skipped and do not count), 2 for a usage error or
nothing to index.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from ..render_worker import DEFAULT_RENDER_TIMEOUT
from .common import load_retriever
from .options import INDEX_OR_QDRANT_OPTION, MODELS_DIR_OPTION, RETRIEVER_OPTION, THREADS_OPTION, password_option
from .output import printable
from .progress import ProgressLine


@app.command("index")
def index_cmd(
    paths: list[Path] = typer.Argument(
        ...,
        help="Files and folders (searched recursively for PDF, XPS, EPUB, CBZ, PNG, JPEG and TIFF files).",
    ),
    index: str | None = INDEX_OR_QDRANT_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
    threads: int | None = THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    password: str | None = password_option("PDFs (tried on every encrypted file)"),
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
    render_timeout: float = typer.Option(
        DEFAULT_RENDER_TIMEOUT,
        "--render-timeout",
        min=1.0,
        help="Seconds a page may take to render (mupdf can hang on a hostile page); a page over it is "
        "recorded as failed and the run goes on.",
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Render and embed the pages on a Ray cluster (pip install 'colrag\\[ray]'); this process stores them.",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="With --ray: the cluster to join (auto, ray://HOST:10001, HOST:6379) \\[default: a local Ray here].",
    ),
    ray_workers: int | None = typer.Option(
        None,
        "--ray-workers",
        min=1,
        help="With --ray: workers, each loading the retriever once \\[default: the cluster's CPUs; a local Ray: 2].",
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
    from ..render import KINDS_TEXT, find_pdfs
    from .progress import plural
    from .scale_cmd import index_target, open_index_writer, ray_pages_source

    target = index_target(index)  # a folder, or a Qdrant spec (docs/SCALE.md), checked before models load
    if ray_workers and not ray:
        raise InputError("--ray-workers goes with --ray")
    if not find_pdfs(paths):  # also: a missing path fails now, before the retriever loads
        where = ", ".join(str(p) for p in paths)
        raise InputError(f"no PDF found in {where} (colrag indexes {KINDS_TEXT})")
    model = load_retriever(retriever, models_dir, threads, backend, precision)
    progress = ProgressLine()
    with open_index_writer(target, model, page_features) as idx:
        for note in idx.repair_notes:
            typer.echo(f"repair: {note}", err=True)
        try:
            with ray_pages_source(
                ray, model, idx, ray_address, ray_workers, threads, password, backend, precision, render_timeout
            ) as src:
                indexer = Indexer(
                    idx,
                    model,
                    password=password,
                    progress=progress,
                    retry_failed=retry_failed,
                    render_timeout=render_timeout,
                    pages_source=src,
                )
                report = indexer.run(paths)
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
            "could not be read or is empty (an unmounted share?); `colrag remove PATH` forgets them if they "
            "are gone for good",
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
