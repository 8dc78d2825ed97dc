"""Helpers that several commands share: loading the retriever, Qdrant index names, sizes."""

from __future__ import annotations

from pathlib import Path

from .progress import loading


def load_retriever(
    retriever: Path | None,
    models_dir: Path | None,
    threads: int | None,
    backend: str | None = None,
    precision: str | None = None,
):
    from ..errors import BundleError
    from ..paths import retriever_dir
    from ..vlm.bundle import MANIFEST
    from ..vlm.runtime import check_threads

    check_threads(threads)
    bundle = retriever_dir(retriever, models_dir)
    if not (bundle / MANIFEST).is_file():
        raise BundleError(
            f"no retriever bundle at {bundle}: run `colrag models install`, or "
            f"`colrag models export retriever SRC --out {bundle}` (or pass --retriever DIR)"
        )
    if threads:  # FAISS's OpenMP threads for indexing (centroid assignment); searches set theirs per call
        import faiss

        faiss.omp_set_num_threads(threads)
    from ..vlm.retriever import Retriever

    with loading("the retriever"):
        return Retriever.load(bundle, threads=threads, backend=backend, precision=precision)


def is_qdrant(index: str | None) -> bool:
    """--index qdrant+edge:PATH or qdrant:URL (search, status, remove and export-index take it)."""
    return bool(index) and str(index).startswith(("qdrant:", "qdrant+edge:"))


def human_bytes(count: int) -> str:
    n = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
