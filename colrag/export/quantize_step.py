"""The quantize step of a bundle: what `models export --quantize` ends with, and the one way to
quantize an fp32 bundle already on disk.

    from colrag.export import quantize_bundle
    quantize_bundle("models/retriever-fp32", "models/retriever", "int8")

`quantize_graphs` quantizes each graph of a bundle (colrag.export.quantize.quantize_graph) and
measures how far its outputs moved from the fp32 graph's on fixed check inputs built here in
numpy (no torch): row cosines for every graph, greedy top-1 agreement for the decoder's
logits. The exporters call it on their work folder after the torch checks; `quantize_bundle`
calls it on a copy of a verified fp32 bundle, so both give the same graph files and the same
"quantization" record. The manifest (sizes and sha256 of every file) is written anew; a
generator sharing a retriever's vision graph keeps pointing at it (the shared graph is the
retriever's to quantize, never copied).
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ColragError
from ..vlm.bundle import bundle_file, verify_bundle
from ..vlm.preprocess import vision_rot_pos_ids
from . import steps
from .common import check_target

# The graphs a bundle may hold, in the order they are quantized.
GRAPHS = ("vision", "text", "decoder")


@dataclass(frozen=True)
class DriftCheck:
    """Feeds for one graph, run in order on one session; a feed value "present:<i>" is the previous
    step's i-th present k/v. label: where the stats go under the graph's record (None: the record itself)."""

    graph: str  # "vision", "text" or "decoder"
    label: str | None
    steps: list[dict[str, Any]]


def run_steps(path: Path, feeds: list[dict[str, Any]]) -> tuple[list[np.ndarray], tuple]:
    """The first output of each step (one onnxruntime CPU session), and the last step's cache shape."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs: list[np.ndarray] = []
    present: list = []
    for step in feeds:
        step = dict(step)
        for name, value in list(step.items()):
            if isinstance(value, str):  # "present:<index>": an output of the previous step
                step[name] = present[int(value.split(":")[1])]
        got, *present = sess.run(None, step)
        outs.append(got)
    del sess
    gc.collect()
    return outs, (present[0].shape if present else ())


def text_positions(mask: np.ndarray) -> np.ndarray:
    """Text-like 3-D positions (3, B, T) from a left-padded mask (B, T), the three axes made to differ."""
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)  # (B, T)
    pos = np.repeat(pos[None], 3, axis=0)  # (3, B, T)
    t = np.arange(mask.shape[-1])
    pos[1] += t % 3  # as for image tokens, whose h/w positions differ
    pos[2] += (t % 2) * 2
    return pos.astype(np.int64)


def _vision_feeds(grid: tuple[int, int, int], seed: int, merge: int) -> dict[str, np.ndarray]:
    n = grid[0] * grid[1] * grid[2]
    pixel_values = np.random.default_rng(seed).standard_normal((n, 1176), dtype=np.float32)  # (N, 1176)
    return {"pixel_values": pixel_values, "rot_pos_ids": vision_rot_pos_ids(grid, merge)}  # (N, 2)


def drift_checks(kind: str, fields: dict[str, Any]) -> list[DriftCheck]:
    """The check inputs of every graph this bundle holds (a shared vision graph is not its own)."""
    graphs = fields["graphs"]
    hidden = int(fields["hidden_size"])
    merge = int(fields.get("spatial_merge_size", 2))
    rng = np.random.default_rng(5)
    checks = []
    if kind == "retriever":
        b, s = 2, 29
        mask = np.ones((b, s), dtype=np.int64)
        mask[1, :2] = 0  # left padding on the second row
        text = {
            "inputs_embeds": rng.standard_normal((b, s, hidden), dtype=np.float32),
            "position_ids": text_positions(mask),
            "attention_mask": mask,
        }
        checks.append(DriftCheck("vision", None, [_vision_feeds(steps.CHECK_GRID, 1, merge)]))
        checks.append(DriftCheck("text", None, [text]))
        return [c for c in checks if c.graph in graphs]
    for label, grid, seed in (("vision_export_grid", steps.EXPORT_GRID, 0), ("vision_check_grid", steps.CHECK_GRID, 1)):
        checks.append(DriftCheck("vision", label, [_vision_feeds(grid, seed, merge)]))
    b, s = 2, 11
    layers, kv_heads, head_dim = int(fields["num_layers"]), int(fields["num_kv_heads"]), int(fields["head_dim"])
    past = [f"past_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    embeds = rng.standard_normal((b, s + 1, hidden), dtype=np.float32)  # the last position is the decode step
    mask = np.ones((b, s + 1), dtype=np.int64)
    mask[1, :3] = 0
    pos = text_positions(mask)
    empty = np.zeros((b, kv_heads, 0, head_dim), dtype=np.float32)
    prefill = {"inputs_embeds": embeds[:, :s], "position_ids": pos[:, :, :s], "attention_mask": mask[:, :s]}
    decode: dict[str, Any] = {"inputs_embeds": embeds[:, s:], "position_ids": pos[:, :, s:], "attention_mask": mask}
    prefill |= {name: empty for name in past}
    decode |= {name: f"present:{i}" for i, name in enumerate(past)}
    checks.append(DriftCheck("decoder", "decoder_prefill_decode", [prefill, decode]))
    return [c for c in checks if c.graph in graphs]


def drift(fp32: list[np.ndarray], quantized: list[np.ndarray], *, logits: bool) -> dict[str, float]:
    """Row cosines of the quantized outputs against fp32 (all-zero rows, i.e. padding, left out)."""
    a = np.concatenate([x.reshape(-1, x.shape[-1]) for x in quantized]).astype(np.float64)
    b = np.concatenate([x.reshape(-1, x.shape[-1]) for x in fp32]).astype(np.float64)
    keep = np.linalg.norm(b, axis=1) > 0
    a, b = a[keep], b[keep]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    stats = {"min_cosine_vs_fp32": float(cos.min()), "mean_cosine_vs_fp32": float(cos.mean())}
    if logits:  # rows are next-token logits: does the greedy choice survive?
        stats["top1_agreement_vs_fp32"] = float((a.argmax(1) == b.argmax(1)).mean())
    return stats


def external_files(graph: Path) -> set[str]:
    """The external data files an ONNX graph names (relative to its folder)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def quantize_graphs(src: Path, work: Path, kind: str, fields: dict[str, Any], scheme: str) -> dict[str, Any]:
    """Quantize the fp32 graphs named in fields["graphs"] from folder `src` into `work` (the same
    folder for an export: the fp32 files are replaced); returns the manifest's "quantization" record."""
    from .quantize import quantize_graph

    checks = drift_checks(kind, fields)
    info: dict[str, Any] = {"scheme": scheme, "graphs": {}}
    for name in GRAPHS:
        if name not in fields["graphs"]:
            continue
        graph = fields["graphs"][name]
        steps.log(f"quantizing the {name} graph ({scheme}) ...")
        fp32_path, q_path = src / graph, work / f"{name}.q.onnx"
        fp32_files = {graph, *external_files(fp32_path)}
        stats = quantize_graph(fp32_path, q_path, scheme, vision=name == "vision")
        for check in (c for c in checks if c.graph == name):
            want, _ = run_steps(fp32_path, check.steps)
            got, _ = run_steps(q_path, check.steps)
            measured = drift(want, got, logits=name == "decoder")
            if check.label is None:
                stats.update(measured)
            else:
                stats[check.label] = measured
        info["graphs"][name] = stats
        for old in fp32_files:
            (work / old).unlink(missing_ok=True)
        q_path.rename(work / graph)  # its weights stay in <name>.q.onnx.data, which the graph names
        gc.collect()
    return info


def quantize_bundle(
    src: str | os.PathLike, dst: str | os.PathLike, scheme: str = "int8", *, force: bool = False
) -> dict:
    """Quantize the fp32 bundle at `src` into a new bundle at `dst` (src is left as it is); returns
    dst's manifest. The same graphs and drift record as exporting with `quantize=scheme`."""
    from .quantize import QUANT_SCHEMES

    if scheme not in QUANT_SCHEMES:
        raise ColragError(f"unknown quantization {scheme!r}: choose {', '.join(QUANT_SCHEMES)}")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    manifest = verify_bundle(src)  # every file hashed: a damaged bundle is refused, not quantized
    kind = manifest["kind"]
    if manifest.get("quantization"):
        raise ColragError(f"{src} is already quantized ({manifest['quantization'].get('scheme')}): give an fp32 bundle")
    if dst.resolve() == src.resolve():
        raise ColragError(f"{dst} is the bundle being quantized: give another folder")
    check_target(dst, kind, force=force)  # refused before anything is written
    started = time.perf_counter() - float(manifest.get("export_seconds") or 0.0)
    fields = {k: v for k, v in manifest.items() if k not in ("format", "kind", "files", "export_seconds")}
    skip = set()
    for name in GRAPHS:
        if name in fields["graphs"]:
            graph = bundle_file(src, manifest, fields["graphs"][name])
            skip |= {fields["graphs"][name], *external_files(graph)}
    with steps.work_folder(dst) as work:
        for name in manifest["files"]:
            if name not in skip:
                target = work / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle_file(src, manifest, name), target)
        shared = fields.get("shared_vision")
        if isinstance(shared, dict):  # the retriever bundle it shares, seen from dst
            retriever = (src / shared["bundle"]).resolve()
            rel = os.path.relpath(retriever, dst.parent.resolve() / dst.name)
            fields["shared_vision"] = {**shared, "bundle": Path(rel).as_posix()}
        fields["quantization"] = quantize_graphs(src, work, kind, fields, scheme)
        return steps.finish_bundle(work, dst, kind, fields, started, force=force)
