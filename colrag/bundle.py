"""Model bundles: a folder of ONNX graphs, tables and configs with a manifest.

manifest.json records a format version, the bundle kind (retriever / generator),
model facts (dims, pixel caps, source) and the size and sha256 of every file.
Loading checks presence and sizes (fast); `verify_bundle` re-hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import BundleError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; bundles and indexes are meant to be shared read-only
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def _bundle_files(bundle_dir: Path) -> list[Path]:
    return sorted(
        p for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")
    )


def write_manifest(bundle_dir: str | os.PathLike, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in the bundle and write manifest.json (atomically, last)."""
    bundle_dir = Path(bundle_dir)
    files = {
        p.relative_to(bundle_dir).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _bundle_files(bundle_dir)
    }
    manifest = {"format": BUNDLE_FORMAT, "kind": kind, **fields, "files": files}
    atomic_write_json(bundle_dir / MANIFEST, manifest)
    return manifest


def load_manifest(bundle_dir: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read and check a bundle's manifest: format, kind, every file present with its size."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise BundleError(f"no model bundle at {bundle_dir}")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a colrag model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable {path}: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"malformed {path}")
    fmt = manifest.get("format")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(f"{bundle_dir}: bundle format {fmt!r} is not supported (this colrag reads {BUNDLE_FORMAT}); re-export it")
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(f"{bundle_dir} holds a {manifest.get('kind')!r} bundle, not a {kind!r} one")
    root = bundle_dir.resolve()
    for rel, info in manifest["files"].items():
        file = (bundle_dir / rel).resolve()
        if root not in file.parents:  # a manifest must not point outside its bundle
            raise BundleError(f"{bundle_dir}: manifest names a file outside the bundle: {rel}")
        if not file.is_file():
            raise BundleError(f"{bundle_dir}: missing file {rel}; re-export or reinstall the bundle")
        if file.stat().st_size != info.get("size"):
            raise BundleError(
                f"{bundle_dir}: {rel} has {file.stat().st_size} bytes, the manifest says {info.get('size')} "
                "(truncated or modified); re-export or reinstall the bundle"
            )
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Full check: the manifest, then the sha256 of every file."""
    manifest = load_manifest(bundle_dir, kind)
    for rel, info in manifest["files"].items():
        if sha256_file(Path(bundle_dir) / rel) != info.get("sha256"):
            raise BundleError(f"{bundle_dir}: {rel} does not match its checksum (corrupt or modified); re-export or reinstall the bundle")
    return manifest


def load_embedding_table(bundle_dir: str | os.PathLike, manifest: dict[str, Any]):
    """The bundle's token-embedding table, memory-mapped: (vocab, hidden) float32."""
    import numpy as np

    path = bundle_file(bundle_dir, manifest, manifest["graphs"]["embed_tokens"])
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise BundleError(f"{bundle_dir}: unreadable embedding table: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != manifest["hidden_size"]:
        raise BundleError(f"{bundle_dir}: embedding table has shape {table.shape}, expected (vocab, {manifest['hidden_size']})")
    return table


def bundle_id(manifest: dict[str, Any]) -> str:
    """A stable identity of a bundle's content: the hash of its files' checksums."""
    listing = json.dumps({k: v.get("sha256") for k, v in sorted(manifest["files"].items())}, sort_keys=True)
    return hashlib.sha256(listing.encode()).hexdigest()[:32]


def bundle_file(bundle_dir: str | os.PathLike, manifest: dict[str, Any], name: str) -> Path:
    """Path of a file the manifest lists; a clear error if the bundle lacks it."""
    if name not in manifest["files"]:
        raise BundleError(f"{bundle_dir}: the bundle has no {name}")
    return Path(bundle_dir) / name
