"""`colrag remove`: forget documents (asks before forgetting many)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..cli import app
from .common import is_qdrant
from .options import INDEX_OR_QDRANT_OPTION
from .output import printable

REMOVE_WITHOUT_ASKING = 5  # more documents than this (or every document) needs a yes


@app.command("remove")
def remove_cmd(
    paths: list[Path] = typer.Argument(..., help="Files, or folders (every indexed file under them), to forget."),
    index: str | None = INDEX_OR_QDRANT_OPTION,
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

    if is_qdrant(index):  # docs/SCALE.md
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
