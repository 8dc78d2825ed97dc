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
    as_json: bool = typer.Option(
        False, "--json", help="Print the vector bytes before and after as JSON (docs/JSON.md)."
    ),
) -> None:
    """Reclaim the space of removed and replaced pages' vectors (searches keep working meanwhile)."""
    from ..paths import index_dir
    from ..store import Index

    folder = index_dir(index)
    with Index.open_writer(folder, None) as idx:
        result = idx.compact()
        idx.refresh()
    if as_json:
        doc = {"schema": 1, "command": "compact", "index": {"path": str(folder.resolve())}, **result}
        typer.echo(json.dumps(doc))
    else:
        typer.echo(
            f"vectors: {human_bytes(result['vector_bytes_before'])} -> {human_bytes(result['vector_bytes_after'])}"
        )
