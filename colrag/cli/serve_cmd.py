"""`colrag serve`: keep the retriever and generator loaded; `colrag ask` uses it when it runs (colrag.serve)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .options import GENERATOR_OPTION, MODEL_THREADS_OPTION, MODELS_DIR_OPTION, RETRIEVER_OPTION


@app.command("serve")
def serve_cmd(
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
    generator: Path | None = GENERATOR_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    threads: int | None = MODEL_THREADS_OPTION,
) -> None:
    """Load the models once and answer `colrag ask` questions from them (Ctrl-C stops). `ask` finds the server on
    $COLRAG_HOME/run/serve.sock and uses it when its bundles and --threads are the same; it saves loading the models
    (~12 s at full size) on every question."""
    from ..ask import Asker
    from ..paths import generator_dir, retriever_dir
    from ..serve import serve

    asker = Asker.open(
        models_dir=models_dir,
        retriever=retriever,
        generator=generator,
        threads=threads,
        keep_retriever=True,
        backend=backend,
        precision=precision,
    )
    asker.load_retriever()
    asker.generator  # noqa: B018 -- load it now, not at the first question
    typer.echo(f"models loaded in {asker.load_s:.1f}s", err=True)
    serve(
        asker,
        retriever_dir(retriever, models_dir),
        generator_dir(generator, models_dir),
        threads,
        log=lambda message: typer.echo(message, err=True),
    )
