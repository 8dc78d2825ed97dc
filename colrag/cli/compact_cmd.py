"""`colrag compact`: reclaim the space of removed and replaced pages' vectors."""

from __future__ import annotations

import json

import typer

from ..cli import app
from .common import human_bytes
from .options import INDEX_OPTION


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
            f"vectors: {human_bytes(result['vector_bytes_before'])} -> {human_bytes(result['vector_bytes_after'])}"
        )
