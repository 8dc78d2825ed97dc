"""`colrag doctor`: check the installation, one line per check; exit 1 if any check FAILs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .options import INDEX_OPTION, MODELS_DIR_OPTION
from .output import printable


@app.command("doctor")
def doctor_cmd(
    index: str | None = INDEX_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    full: bool = typer.Option(
        False, "--full", help="Also re-hash every bundle file (sha256) and read every index vector: slower."
    ),
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check Python, the libraries, the model bundles, the index and free disk: ok / warn / FAIL, each with a fix."""
    from ..doctor import FAIL, as_dicts, run_checks

    checks = run_checks(models_dir=models_dir, index=index, full=full, backend=backend, precision=precision)
    if as_json:
        typer.echo(json.dumps(as_dicts(checks), indent=2))
    else:
        for check in checks:
            typer.echo(printable(check.line()))  # details name bundle and index paths
    failed = [c for c in checks if c.status == FAIL]
    if failed:
        if not as_json:
            typer.echo(f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}", err=True)
        raise typer.Exit(1)
