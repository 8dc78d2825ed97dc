"""Options that several commands share, defined once."""

from __future__ import annotations

from typing import Any

import typer

INDEX_OPTION = typer.Option(
    None,
    "--index",
    envvar="COLRAG_INDEX",
    help="Index name (a folder under $COLRAG_HOME/indexes) or path to an index folder \\[default: default].",
)
INDEX_OR_QDRANT_OPTION = typer.Option(
    None,
    "--index",
    envvar="COLRAG_INDEX",
    help="Index name (a folder under $COLRAG_HOME/indexes), path to an index folder, or a Qdrant index: "
    "qdrant+edge:PATH or qdrant:http://HOST:6333/COLLECTION (docs/SCALE.md) \\[default: default].",
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
    """--threads is checked as it is parsed: one line above a few threads per core.

    (colrag.vlm.runtime.check_threads)"""
    from ..vlm.runtime import check_threads

    return check_threads(value)


THREADS_OPTION = typer.Option(
    None,
    "--threads",
    min=1,
    callback=check_threads_option,
    help="CPU threads for onnxruntime, FAISS and the rerank \\[default: OMP_NUM_THREADS, else all cores]; "
    "results do not depend on it.",
)
MODEL_THREADS_OPTION = typer.Option(
    None,
    "--threads",
    min=1,
    callback=check_threads_option,
    help="CPU threads for onnxruntime \\[default: OMP_NUM_THREADS, else all cores].",
)
GENERATOR_OPTION = typer.Option(
    None,
    "--generator",
    help="Generator bundle folder to use \\[default: <models-dir>/generator].",
)
# `models export retriever|generator` and `models install`
OPSET_OPTION = typer.Option(18, help="ONNX opset of the exported graphs.")
REPLACE_BUNDLE_OPTION = typer.Option(False, "--force", help="Replace an existing bundle at --out.")
EXPORT_VERBOSE_OPTION = typer.Option(
    False,
    "--verbose",
    help="Also show what torch, onnxscript, transformers and onnxruntime print (logs, warnings, progress bars).",
)


def password_option(what: str) -> Any:
    """--password (or COLRAG_PDF_PASSWORD, which keeps it out of `ps`): `what` says which PDFs it opens."""
    return typer.Option(None, "--password", envvar="COLRAG_PDF_PASSWORD", help=f"Password of encrypted {what}.")


def png_out_option(flag: str) -> Any:
    """--out DIR, the folder for the PNGs `flag` (--show, --explain) writes."""
    return typer.Option(
        None,
        "--out",
        metavar="DIR",
        file_okay=False,
        help=f"Folder for the {flag} PNGs \\[default: $COLRAG_HOME/out; a file of the same name is replaced].",
    )
