"""`colrag export-index`: copy a local index into Qdrant (docs/SCALE.md)."""

from __future__ import annotations

import json

import typer

from ..cli import app
from .index_cmd import INDEX_OPTION


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
            f"{to} holds the {counts['pages']} pages of {source}"
        )
