"""Model bundles: a folder of ONNX graphs, tables and configs with a manifest.

manifest.json records a format version, the bundle kind (retriever / generator),
model facts (dims, pixel caps, source) and the size and sha256 of every file.
`load_manifest` checks the manifest against a schema (one-line BundleError on a missing
or mistyped field) and every file's presence and size; `verify_bundle` re-hashes
everything; `load_verified_manifest` (what the models load with) re-hashes only files
not verified before, see colrag.vlm.verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ..errors import BundleError
from ..fsutil import atomic_write_json

if TYPE_CHECKING:
    import numpy as np

    from .preprocess import ImageProcessorConfig
    from .tokenization import Tokenizer

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    if not isinstance(manifest, dict):
        raise BundleError(f"malformed {path}: not a JSON object")
    fmt = manifest.get("format")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(
            f"{bundle_dir}: bundle format {fmt!r} is not supported (this colrag reads {BUNDLE_FORMAT}); re-export it"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(f"{bundle_dir} holds a {manifest.get('kind')!r} bundle, not a {kind!r} one")
    problem = manifest_problem(manifest)
    if problem:
        raise BundleError(f"malformed {path}: {problem}; re-export or reinstall the bundle")
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


# -- manifest schema ----------------------------------------------------------------------
# What the loaders read, with its type. int means a non-negative int (JSON true/false is not
# one); str means a non-empty string. Optional fields are checked only when present.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PROMPTS = {"page": str, "query_prefix": str, "query_suffix": str}
_SCHEMA: dict[str, dict[str, Any]] = {
    "retriever": {
        "required": {"dim": int, "hidden_size": int, "min_pixels": int, "max_pixels": int, "prompts": _PROMPTS},
        "optional": {
            "image_token_id": int,
            "spatial_merge_size": int,
            "num_layers": int,
            "vocab_size": int,
            "vision_hash": str,
            "source": str,
            "quantization": dict,
        },
        "graphs": ("vision", "text", "embed_tokens"),
    },
    "generator": {
        "required": {
            "hidden_size": int,
            "num_layers": int,
            "num_kv_heads": int,
            "head_dim": int,
            "min_pixels": int,
            "max_pixels": int,
        },
        "optional": {
            "eos_token_ids": list,
            "image_token_id": int,
            "spatial_merge_size": int,
            "vocab_size": int,
            "vision_hash": str,
            "source": str,
            "quantization": dict,
            "shared_vision": {"bundle": str, "graph": str, "sha256": str},
        },
        "graphs": ("decoder", "embed_tokens"),
    },
}


def _type_problem(name: str, value: Any, want: Any) -> str | None:
    if isinstance(want, dict):
        if not isinstance(value, dict):
            return f"`{name}` must be an object, got {value!r:.60}"
        for key, sub in want.items():
            if key not in value:
                return f"`{name}.{key}` is missing"
            problem = _type_problem(f"{name}.{key}", value[key], sub)
            if problem:
                return problem
        return None
    if want is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        return f"`{name}` must be a non-negative integer, got {value!r:.60}"
    if want is str and (not isinstance(value, str) or not value):
        return f"`{name}` must be a non-empty string, got {value!r:.60}"
    if want is list and not isinstance(value, list):
        return f"`{name}` must be a list, got {value!r:.60}"
    if want is dict and not isinstance(value, dict):
        return f"`{name}` must be an object, got {value!r:.60}"
    return None


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's structure (one phrase), or None when it fits the schema."""
    kind = manifest.get("kind")
    if kind not in _SCHEMA:
        return f"`kind` must be one of {', '.join(_SCHEMA)}, got {kind!r:.60}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "`files` must be a non-empty object"
    for rel, info in files.items():
        if not rel or rel.startswith("/") or "\\" in rel or ".." in rel.split("/") or "\0" in rel:
            return f"`files` names an invalid path {rel!r:.80}"
        problem = _type_problem(f"files[{rel!r}]", info, {"size": int, "sha256": str})
        if problem:
            return problem
        if not _SHA256.fullmatch(info["sha256"]):
            return f"`files[{rel!r}].sha256` is not a sha256 hex digest"
    schema = _SCHEMA[kind]
    for name, want in schema["required"].items():
        if name not in manifest:
            return f"`{name}` is missing"
        problem = _type_problem(name, manifest[name], want)
        if problem:
            return problem
    for name, want in schema["optional"].items():
        if manifest.get(name) is not None:
            problem = _type_problem(name, manifest[name], want)
            if problem:
                return problem
    eos = manifest.get("eos_token_ids")
    if eos is not None and not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in eos):
        return "`eos_token_ids` must list non-negative integers"
    if kind == "generator" and manifest.get("shared_vision") is not None:
        sha = manifest["shared_vision"]["sha256"]
        if not _SHA256.fullmatch(sha):
            return "`shared_vision.sha256` is not a sha256 hex digest"
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict):
        return "`graphs` is missing" if graphs is None else "`graphs` must be an object"
    needed = list(schema["graphs"])
    if kind == "generator" and manifest.get("shared_vision") is None:
        needed.append("vision")
    for name in needed:
        if name not in graphs:
            return f"`graphs.{name}` is missing"
    for name, file in graphs.items():
        if not isinstance(file, str) or file not in files:
            return f"`graphs.{name}` must name a file listed in `files`, got {file!r:.80}"
    return None


def load_verified_manifest(bundle_dir: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """`load_manifest`, then every file's sha256 checked unless a stamp says it was verified unchanged."""
    from .verified import verify_with_stamps

    manifest = load_manifest(bundle_dir, kind)
    verify_with_stamps(Path(bundle_dir), manifest)
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Full check: the manifest, then the sha256 of every file."""
    from .verified import verify_with_stamps

    manifest = load_manifest(bundle_dir, kind)
    verify_with_stamps(Path(bundle_dir), manifest, trust_stamps=False)
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
        raise BundleError(
            f"{bundle_dir}: embedding table has shape {table.shape}, expected (vocab, {manifest['hidden_size']})"
        )
    return table


class RuntimeOptions(TypedDict, total=False):
    """Where a bundle's graphs run (colrag.vlm.backends): Retriever.load's and Generator.load's keywords."""

    threads: int | None
    device: str | None
    backend: str | None  # auto | onnxruntime | openvino (None: COLRAG_BACKEND, else auto)
    precision: str | None  # auto | f32 | bf16 (None: COLRAG_PRECISION, else auto)


@dataclass
class OpenedBundle:
    """What every model bundle holds besides its graphs, checked and loaded."""

    dir: Path
    manifest: dict[str, Any]
    table: np.ndarray  # (vocab, hidden) float32, memory-mapped
    tokenizer: Tokenizer
    image_config: ImageProcessorConfig

    @property
    def id(self) -> str:
        return bundle_id(self.manifest)


def open_bundle(bundle_dir: str | os.PathLike, kind: str) -> OpenedBundle:
    """A bundle's manifest (sha256 of every file on first load, then stamps), embedding table,
    tokenizer and image processor config; the graphs are the model's to open."""
    from .preprocess import ImageProcessorConfig
    from .tokenization import Tokenizer

    folder = Path(bundle_dir).expanduser()
    manifest = load_verified_manifest(folder, kind)
    table = load_embedding_table(folder, manifest)
    tokenizer = Tokenizer.from_dir(folder)
    image_config = ImageProcessorConfig.from_json(folder / "preprocessor_config.json")
    return OpenedBundle(folder, manifest, table, tokenizer, image_config)


def bundle_id(manifest: dict[str, Any]) -> str:
    """A stable identity of a bundle's content: the hash of its files' checksums."""
    listing = json.dumps({k: v.get("sha256") for k, v in sorted(manifest["files"].items())}, sort_keys=True)
    return hashlib.sha256(listing.encode()).hexdigest()[:32]


def bundle_file(bundle_dir: str | os.PathLike, manifest: dict[str, Any], name: str) -> Path:
    """Path of a file the manifest lists; a clear error if the bundle lacks it."""
    if name not in manifest["files"]:
        raise BundleError(f"{bundle_dir}: the bundle has no {name}")
    return Path(bundle_dir) / name
