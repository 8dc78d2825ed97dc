"""`colrag status`: what an index holds, which bundle built it, and (--check) whether its files are intact."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import app
from .common import human_bytes, is_qdrant
from .options import INDEX_OR_QDRANT_OPTION, MODELS_DIR_OPTION, RETRIEVER_OPTION
from .output import printable


def _bundle_in_use(built: dict, retriever: Path | None, models_dir: Path | None) -> tuple[str | None, str]:
    """(path of the retriever bundle that search would use, if it is the one that built the index; a line saying so)."""
    from ..errors import BundleError
    from ..paths import retriever_dir
    from ..vlm.bundle import bundle_id, load_manifest

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
    index: str | None = INDEX_OR_QDRANT_OPTION,
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

    if is_qdrant(index):  # docs/SCALE.md
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
            f"on disk    {human_bytes(stats['bytes_on_disk'])} (dead "
            f"vectors {human_bytes(stats['dead_vector_bytes'])}: "
            "removed or replaced pages, reclaimed by `colrag compact`, or automatically past a quarter of the vectors)"
        )
        if stats["features"] is not None or stats["pages_with_features"]:
            typer.echo(
                f"features   {stats['pages_with_features']} of {stats['pages']} "
                f"pages, {human_bytes(stats['feature_bytes'])} "
                f"({human_bytes(stats['feature_bytes_per_page'])} per page)"
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
