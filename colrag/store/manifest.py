"""manifest.json: what an index is (format, schema version, retriever identity, dims, codec, render budget).

Written once when the index is created (atomic), and again only by the schema-2 -> 3
upgrade. An index created through the Python API from precomputed vectors records
"retriever": null: it can be searched with vectors, not with text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .. import __version__
from ..errors import IndexStoreError
from ..render import RenderOptions
from .catalog import now
from .segments import CODEC

INDEX_FORMAT = "colrag-index"
MANIFEST_FILE = "manifest.json"
# the manifest's schema_version: the layout of the files (3: FAISS SQ8 segments, coarse centroids, page lists).
# The catalog's tables have their own version (PRAGMA user_version), upgraded by migrations (catalog/migrations.py).
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class RetrieverInfo:
    """What an index must know about the retriever that filled it."""

    bundle_id: str
    name: str
    dim: int
    max_pixels: int
    vision_hash: str | None = None  # of the vision tower whose output the index keeps as page features
    hidden_size: int = 0

    @classmethod
    def of(cls, retriever: Any) -> RetrieverInfo:
        return cls(
            str(retriever.bundle_id),
            str(retriever.name),
            int(retriever.dim),
            int(retriever.max_pixels),
            getattr(retriever, "vision_hash", None),
            int(getattr(retriever, "hidden_size", 0) or 0),
        )


def manifest_for(info: RetrieverInfo | None, render: RenderOptions, dim: int | None = None) -> dict[str, Any]:
    """A new index's manifest; info None: filled with precomputed vectors of `dim` dimensions."""
    if info is None and not dim:
        raise IndexStoreError("a new index without a retriever needs its vector size (dim=...)")
    return {
        "format": INDEX_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "colrag_version": __version__,
        "created_at": now(),
        "retriever": None if info is None else {"bundle_id": info.bundle_id, "name": info.name},
        "dim": info.dim if info is not None else int(dim or 0),
        "max_pixels": info.max_pixels if info is not None else None,
        "render": render.as_dict(),
        "vector_codec": CODEC,
    }


def read_manifest(path: Path, *, upgradable: bool = False) -> dict[str, Any]:
    """The validated manifest; schema 2 only when `upgradable` (the caller upgrades it)."""
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise IndexStoreError(f"no index at {path}: run `colrag index DIR` to create it")
    if file.is_symlink() or not file.is_file():
        raise IndexStoreError(
            f"{path} is not a colrag index (no {MANIFEST_FILE}); run `colrag index DIR` to create one"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexStoreError(f"unreadable index manifest {file}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise IndexStoreError(f"{path} is not a colrag index ({file} is not a colrag index manifest)")
    version = manifest.get("schema_version")
    if not _is_int(version) or version > SCHEMA_VERSION:
        raise IndexStoreError(
            f"index {path} has schema version {version!r}, newer than this colrag reads ({SCHEMA_VERSION}): "
            "upgrade colrag"
        )
    if version < 2:
        raise IndexStoreError(
            f"index {path} has the old schema version {version} (float16 vectors); this colrag reads versions "
            f"2-{SCHEMA_VERSION}: "
            "re-index your PDFs into a new --index (or delete this folder and run `colrag index` again)"
        )
    if version == 2 and not upgradable:
        raise IndexStoreError(f"index {path} has schema version 2 and must be upgraded by a writer first")
    _check_manifest(manifest, file)
    return manifest


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(manifest: dict[str, Any], file: Path) -> None:
    """The fields colrag reads, with their types: a damaged manifest is one line, not a traceback."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise IndexStoreError(
                f"index manifest {file}: {what} (the manifest is damaged: restore it, or re-index into a new --index)"
            )

    retriever = manifest.get("retriever")
    need(retriever is None or isinstance(retriever, dict), "'retriever' must be an object {bundle_id, name} or null")
    if retriever is not None:
        need(
            isinstance(retriever.get("bundle_id"), str) and bool(retriever["bundle_id"]),
            "'retriever.bundle_id' must be a non-empty string",
        )
        need(isinstance(retriever.get("name", ""), str), "'retriever.name' must be a string")
    need(
        _is_int(manifest.get("dim")) and 0 < manifest["dim"] <= 65536,
        f"'dim' must be a positive integer, not {manifest.get('dim')!r}",
    )
    pixels = manifest.get("max_pixels", 1)
    need(pixels is None or (_is_int(pixels) and pixels > 0), "'max_pixels' must be a positive integer")
    render = manifest.get("render", {})
    fields = set(RenderOptions().as_dict())
    need(
        isinstance(render, dict) and set(render) <= fields,
        f"'render' must be an object with keys among {sorted(fields)}",
    )
    need(all(_is_int(v) and v > 0 for v in render.values()), "'render' values must be positive integers")


def check_no_retriever(path: Path, manifest: dict[str, Any]) -> None:
    """One sentence for a text query on an index of precomputed vectors (before any model loads)."""
    if manifest.get("retriever") is None:
        raise IndexStoreError(
            f"index {path} holds precomputed vectors (created with colrag.open_index, no retriever), so it cannot "
            "embed a text query: search it from Python with colrag.open_index(...).search(query_vectors)"
        )


def check_retriever(path: Path, manifest: dict[str, Any], info: RetrieverInfo) -> None:
    check_no_retriever(path, manifest)
    built = manifest["retriever"]
    if built.get("bundle_id") != info.bundle_id:
        raise IndexStoreError(
            f"index {path} was built with retriever {built.get('name')!r} (bundle {built.get('bundle_id')}), "
            f"not the one given ({info.name!r}, bundle {info.bundle_id}): use the same retriever, "
            "or index into another --index"
        )
    if int(manifest.get("dim", -1)) != info.dim:
        raise IndexStoreError(
            f"index {path} holds {manifest.get('dim')}-d vectors; the retriever gives {info.dim}-d ones"
        )
