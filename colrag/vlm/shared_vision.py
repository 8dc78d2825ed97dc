"""Which vision graph a generator bundle runs, and what names it.

A generator bundle holds its own vision graph, or (exported with --share-vision-with)
points at the retriever bundle's: ColQwen2's LoRA leaves Qwen2-VL's vision tower
untouched, so one graph serves both. `vision_graph_path` finds the file and checks that
the retriever bundle still holds the same tower, exported with the same graph;
`vision_graph_sha256` and `vision_session_key` name that graph for the prefix cache and
for the compiled-session cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BundleError
from .bundle import bundle_file, bundle_id, load_verified_manifest


def vision_graph_path(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    """This bundle's vision graph, or the retriever bundle's one it shares (after checking it is the same tower)."""
    if "vision" in manifest["graphs"]:
        return bundle_file(bundle_dir, manifest, manifest["graphs"]["vision"])
    shared = manifest.get("shared_vision")
    if not isinstance(shared, dict):
        raise BundleError(f"{bundle_dir}: the manifest names no vision graph")
    other = (bundle_dir / shared["bundle"]).resolve()
    try:
        other_manifest = load_verified_manifest(other, "retriever")
    except BundleError as exc:
        raise BundleError(
            f"{bundle_dir} shares the vision tower of the retriever bundle at {other}, which cannot be "
            f"used ({exc}); "
            "keep the two bundles side by side or re-export the generator without --share-vision-with"
        ) from exc
    if other_manifest.get("vision_hash") != manifest.get("vision_hash"):
        raise BundleError(
            f"{bundle_dir} shares the vision tower of {other}, but that bundle now holds different vision weights; "
            "re-export the generator"
        )
    name = shared["graph"]
    info = other_manifest["files"].get(name)
    if info is None or info.get("sha256") != shared.get("sha256"):
        raise BundleError(
            f"{bundle_dir}: the shared vision graph {other / name} is not the one exported with; re-export "
            "the generator"
        )
    return bundle_file(other, other_manifest, name)


def vision_graph_sha256(manifest: dict[str, Any]) -> str | None:
    """The sha256 of the vision graph file this bundle runs (its own, or the shared one it was exported with)."""
    graphs = manifest.get("graphs") or {}
    if "vision" in graphs:
        return (manifest["files"].get(graphs["vision"]) or {}).get("sha256")
    return (manifest.get("shared_vision") or {}).get("sha256")


def vision_session_key(manifest: dict[str, Any]) -> str:
    """The compiled-session cache key of the vision graph: a shared graph's own identity, else the bundle's."""
    shared = manifest.get("shared_vision") if "vision" not in manifest["graphs"] else None
    return str(shared["sha256"])[:32] if shared else bundle_id(manifest)
