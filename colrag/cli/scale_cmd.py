"""`colrag export-index` (copy a local index into Qdrant), and the Qdrant side of `index`, `search`,
`status` and `remove` when `--index` is `qdrant+edge:PATH` or `qdrant:URL` (docs/SCALE.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ..cli import app
from .options import INDEX_OPTION
from .output import printable


def index_target(index: str | None) -> str | Path:
    """`--index` as `colrag index` and `ask` use it: a Qdrant spec (checked) or a local index folder."""
    from ..paths import index_dir
    from ..store.qdrant.schema import is_qdrant_spec, parse_spec

    if is_qdrant_spec(index):
        assert index is not None
        parse_spec(index)
        return index
    return index_dir(index)


def open_index_writer(target: str | Path, model: Any, page_features: bool) -> Any:
    """The writer `colrag index` stores pages through: a local Index, or a Qdrant index's catalog."""
    from ..store import Index, RetrieverInfo

    if isinstance(target, str):
        from ..store.qdrant.catalog import open_catalog

        return open_catalog(target, RetrieverInfo.of(model), page_features=page_features)
    return Index.open_writer(target, RetrieverInfo.of(model), page_features=page_features)


def ray_pages_source(
    ray: bool,
    model: Any,
    idx: Any,
    address: str | None,
    workers: int | None,
    threads: int | None,
    password: str | None,
    backend: str | None,
    precision: str | None,
    render_timeout: float,
) -> Any:
    """`colrag index --ray`: a context giving the RayPages pool (colrag.ray_pages), or None without --ray
    (then nothing imports Ray)."""
    import contextlib

    if not ray:  # RAY_ADDRESS in the environment alone does not turn Ray on
        return contextlib.nullcontext(None)
    from ..ray_pages import RayPages

    bundle = getattr(model, "bundle_dir", None)
    if bundle is None:
        raise RuntimeError("--ray needs a retriever loaded from a bundle folder")
    return RayPages(
        bundle,
        address=address,
        workers=workers,
        threads=threads,
        render=idx.render,
        password=password,
        backend=backend,
        precision=precision,
        render_timeout=render_timeout,
    )


@app.command("export-index")
def export_index_cmd(
    to: str = typer.Option(
        ..., "--to", help="Target: qdrant+edge:PATH (embedded Qdrant) or qdrant:http://HOST:6333/COLLECTION."
    ),
    index: str | None = INDEX_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout."),
) -> None:
    """Copy a local index's pages into Qdrant without re-embedding them (their stored vectors are
    copied). Resumable: pages already in the target are skipped, so an interrupted export is
    finished by running the same command again. Needs `pip install 'colrag\\[qdrant]'`."""
    from ..errors import InputError
    from ..paths import index_dir
    from ..store.qdrant import copy_local_index, is_qdrant_spec

    if not is_qdrant_spec(to):
        raise InputError(f"--to {to!r}: expected qdrant+edge:PATH or qdrant:http://HOST:6333/COLLECTION")
    source = index_dir(index)

    def progress(done: int, total: int) -> None:
        typer.echo(f"{done}/{total} pages", err=True)

    try:
        counts = copy_local_index(source, to, progress=progress)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: committed pages are kept; run the same command to resume", err=True)
        raise
    if as_json:
        typer.echo(json.dumps({"from": str(source), "to": to, **counts}, indent=2))
    else:
        typer.echo(
            f"{counts['copied']} pages copied, {counts['skipped']} already there; "
            f"{printable(to)} holds the {counts['pages']} pages of {printable(source)}"
        )


def qdrant_search(
    spec: str, query: str, top_k: int, as_json: bool, load_retriever: Callable[..., Any], load_args: tuple
) -> None:
    """`colrag search --index qdrant...`: the query embedded here, ranked by Qdrant."""
    from ..errors import IndexStoreError
    from ..store.qdrant import open_qdrant

    with open_qdrant(spec, create=False) as ix:
        built = (ix.manifest or {}).get("retriever")
        if not built:
            raise IndexStoreError(
                f"index {spec} was filled with precomputed vectors and records no retriever: "
                "search it from Python with query vectors (QdrantIndex.search)"
            )
        model = load_retriever(*load_args)
        if built.get("bundle_id") != str(model.bundle_id):
            raise IndexStoreError(
                f"index {spec} was built with retriever {built.get('name')!r} (bundle {built.get('bundle_id')}), "
                f"not the one given ({model.name!r}): use the same retriever"
            )
        (q,) = model.embed_queries([query])
        hits = ix.search(q, top_k)
    if as_json:  # docs/JSON.md, as for a local index
        from ..jsonout import document, dumps, hit

        typer.echo(
            dumps(
                document(
                    "search", query=query, index={"path": spec}, results=[hit(h.file, h.page, h.score) for h in hits]
                )
            )
        )
        return
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank}\t{h.score:.4f}\t{printable(h.file)}\tpage {h.page}")


def qdrant_status(spec: str, as_json: bool) -> None:
    from ..store.qdrant.catalog import open_catalog

    with open_catalog(spec, None, create=False) as ix:
        stats = ix.stats()
    failures = [(f["path"], None, f["error"]) for f in stats["failed"]] + [
        (f["file"], f["page"], f["reason"]) for f in stats["page_failures"]
    ]
    if as_json:  # docs/JSON.md: the counts a Qdrant index knows
        from ..jsonout import document, dumps, failure

        keys = ("documents", "pages", "bytes_on_disk", "pages_with_features", "feature_bytes")
        counts = {k: stats[k] for k in keys if k in stats}
        counts["failed_documents"] = len(stats["failed"])
        counts["failed_pages"] = len(stats["page_failures"])
        counts["documents_indexing"] = stats["documents_in_progress"]  # the local index's name (docs/JSON.md)
        typer.echo(
            dumps(
                document(
                    "status",
                    index={"path": str(stats.get("index", spec)), **counts},
                    retriever=stats.get("retriever"),
                    failures=[failure(*f) for f in failures],
                )
            )
        )
        return
    r = stats.get("retriever") or {}
    typer.echo(f"index      {printable(stats['index'])}")
    typer.echo(f"retriever  {r.get('name')} ({r.get('bundle_id')})" if r else "retriever  none (precomputed vectors)")
    being = stats["documents_in_progress"]
    typer.echo(f"documents  {stats['documents']}" + (f" ({being} being indexed)" if being else ""))
    typer.echo(f"pages      {stats['pages']}")
    if stats["bytes_on_disk"] is not None:
        typer.echo(f"on disk    {stats['bytes_on_disk'] / 1e6:.1f} MB")
    if "pages_with_features" in stats:
        typer.echo(f"features   {stats['pages_with_features']} pages, {stats['feature_bytes'] / 1e6:.1f} MB")
    for path, page, reason in failures:
        where = printable(path) if page is None else f"{printable(path)} page {page}"
        typer.echo(f"failed     {where}: {printable(reason)}")


def qdrant_remove(spec: str, paths: list[Path]) -> None:
    """Forget files (or every file under a folder) from a Qdrant index: pages, catalog facts, features."""
    import os

    from ..store.qdrant.catalog import open_catalog

    with open_catalog(spec, None, create=False) as ix:
        known = {d.path for d in ix.documents()} | {f for f, _ in ix.ix.pages()}
        targets: set[str] = set()
        for raw in paths:
            p = os.path.abspath(raw.expanduser())
            targets |= {f for f in known if f == p or f.startswith(p.rstrip(os.sep) + os.sep)}
        ix.remove_documents(sorted(targets))
    for f in sorted(targets):
        typer.echo(f"removed {printable(f)}")
    if not targets:
        typer.echo("nothing to remove: no indexed file matches", err=True)
        raise typer.Exit(1)
