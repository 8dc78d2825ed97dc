"""Decoder weights in fewer bits: re-quantize an exported generator's decoder graph, then time its
decode step and compare its greedy tokens and logits with the bundle's own decoder.

    # a variant of the decoder graph, from the checkpoint's weights (nothing in BUNDLE is modified)
    python bench/experiments/decoder_nbits.py quantize BUNDLE CHECKPOINT --out DIR --bits 4 --block 32 \\
        [--lm-head-bits 8] [--lm-head-block 128] [--accuracy-level 4]
    # decode s/token and agreement, each decoder in a fresh process, the first one the reference
    python bench/experiments/decoder_nbits.py compare BUNDLE [DIR ...] [--prompt 780] [--steps 24]

`quantize` takes each `MatMulNBits` node of BUNDLE's decoder (28 layers x q, k, v, o, gate, up,
down, then the lm_head), finds its weight in CHECKPOINT (the same random weights the bundle was
exported from; checked: the node's own dequantized weight must match it within int8 error), and
quantizes it again with onnxruntime's block quantizer at `--bits`/`--block` (the lm_head at its own
bits/block). `--bits 8 --block 128` reproduces the bundle's int8 weights byte for byte (a check of
the mapping). Only the decoder graph is written (DIR/decoder.onnx + data).

`compare` runs a prompt of `--prompt` random embedding-table rows (the size of an indexed page's
prompt; positions 0..S-1 on all three rope axes), then `--steps` greedy tokens on onnxruntime
(colrag's session factory): decode s/token (median step), greedy tokens equal to the reference's,
and, teacher-forced on the reference's tokens (so that one flip does not derail the rest), the
top-1 agreement and logits cosine per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
ROLES += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dequantize(packed: np.ndarray, scales: np.ndarray, k: int, bits: int) -> np.ndarray:
    """(K, N) float32 weight of a symmetric MatMulNBits B (N, blocks, blob) without zero points."""
    n, blocks, _ = packed.shape
    if bits == 8:
        q = packed.astype(np.int16) - 128
    else:  # two 4-bit values per byte, low nibble first
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, -1).astype(np.int16) - 8
    w = q.astype(np.float32) * scales.reshape(n, blocks, 1)
    return np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)


def quantize(args: argparse.Namespace) -> None:
    import onnx
    import torch
    from onnx import numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits
    from safetensors import safe_open

    from colrag.vlm.bundle import load_verified_manifest

    manifest = load_verified_manifest(args.bundle, "generator")
    src = args.bundle / manifest["graphs"]["decoder"]
    model = onnx.load(str(src), load_external_data=True)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    n_layers = int(manifest["num_layers"])
    if len(nodes) != n_layers * len(ROLES) + 1:
        raise SystemExit(f"{src}: {len(nodes)} MatMulNBits nodes, expected {n_layers * len(ROLES) + 1}")
    ckpt = safe_open(str(args.checkpoint / "model.safetensors"), "pt")
    names = set(ckpt.keys())
    prefix = "model.language_model." if "model.language_model.embed_tokens.weight" in names else "model."
    keep = {n.name for n in model.graph.initializer}
    stats = []
    for i, node in enumerate(nodes):
        a = _attrs(node)
        k, n = int(a["K"]), int(a["N"])
        last = i == len(nodes) - 1
        name = f"{prefix}embed_tokens.weight" if last else f"{prefix}layers.{i // 7}.{ROLES[i % 7]}.weight"
        w = ckpt.get_tensor(name).to(torch.float32).numpy().T  # (K, N)
        if w.shape != (k, n):
            raise SystemExit(f"{node.name}: {name} has shape {w.shape}, the node ({k}, {n})")
        old = _dequantize(
            numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]]), k, a["bits"]
        )
        rel = float(np.linalg.norm(old - w) / np.linalg.norm(w))
        if rel > 0.05:  # int8 block-128 error is ~0.5-1 %
            raise SystemExit(f"{node.name}: {name} is not this node's weight (relative difference {rel:.3f})")
        bits, block = (args.lm_head_bits, args.lm_head_block) if last else (args.bits, args.block)
        blocks = -(-k // block)
        w = np.ascontiguousarray(np.pad(w, ((0, blocks * block - k), (0, 0))))
        packed = np.zeros((n, blocks, block * bits // 8), np.uint8)
        scales = np.zeros((n, blocks), np.float32)
        zero = np.zeros((n, -(-blocks * bits // 8)), np.uint8)
        (quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits)(packed, w, scales, zero, block, n, k, True)
        new = _dequantize(packed, scales, k, bits)
        stats.append(float(np.linalg.norm(new - w[:k]) / np.linalg.norm(w[:k])))
        for j, value in ((1, packed), (2, scales)):
            inits[node.input[j]].CopyFrom(numpy_helper.from_array(value, node.input[j]))
        for attr in node.attribute:
            if attr.name == "bits":
                attr.i = bits
            elif attr.name == "block_size":
                attr.i = block
            elif attr.name == "accuracy_level":
                attr.i = args.accuracy_level
        print(f"{node.name} {name} {bits}-bit block {block}: relative error {stats[-1]:.4f}", flush=True)
    assert keep == {n.name for n in model.graph.initializer}
    args.out.mkdir(parents=True, exist_ok=True)
    dst = args.out / "decoder.onnx"
    for f in (dst, args.out / "decoder.onnx.data"):
        f.unlink(missing_ok=True)
    onnx.save_model(
        model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location="decoder.onnx.data"
    )
    size = (args.out / "decoder.onnx.data").stat().st_size
    print(
        f"wrote {dst}: weights {size / 1e9:.3f} GB; relative weight error vs the checkpoint: layers mean "
        f"{np.mean(stats[:-1]):.4f}, lm_head {stats[-1]:.4f}"
    )


def worker(
    bundle: Path, decoder: Path, n_prompt: int, steps: int, reference: list[int] | None, logits_out: Path
) -> dict:
    from bench._util import peak_rss_gb
    from colrag.vlm import backends
    from colrag.vlm.bundle import load_verified_manifest

    manifest = load_verified_manifest(bundle, "generator")
    table = np.load(bundle / manifest["graphs"]["embed_tokens"], mmap_mode="r")
    n_layers, kv, hd = int(manifest["num_layers"]), int(manifest["num_kv_heads"]), int(manifest["head_dim"])
    past_names = [f"past_{k}_{i}" for i in range(n_layers) for k in ("key", "value")]
    out_names = ["logits"] + [f"present_{k}_{i}" for i in range(n_layers) for k in ("key", "value")]
    t0 = time.perf_counter()
    session = backends.open_session(decoder, graph="decode", backend="onnxruntime")
    load_s = time.perf_counter() - t0
    ids = np.random.default_rng(0).integers(0, 150000, n_prompt)
    embeds = np.asarray(table[ids], dtype=np.float32)[None]

    def run(feeds: dict, past: list) -> tuple[np.ndarray, list, float]:
        t = time.perf_counter()
        outs = session.run({**feeds, **dict(zip(past_names, past, strict=True))}, out_names)
        return backends.as_numpy(outs[0])[0, -1].copy(), list(outs[1:]), time.perf_counter() - t

    def decode(forced: list[int] | None) -> tuple[list[int], list[np.ndarray], list[float], float]:
        past = [np.zeros((1, kv, 0, hd), np.float32)] * len(past_names)
        feeds = {
            "inputs_embeds": embeds,
            "position_ids": np.broadcast_to(np.arange(n_prompt), (3, 1, n_prompt)).astype(np.int64),
            "attention_mask": np.ones((1, n_prompt), np.int64),
        }
        logits, past, prefill_s = run(feeds, past)
        tokens, rows, times, n = [int(logits.argmax())], [logits], [], n_prompt
        for step in range(steps - 1):
            token = forced[step] if forced is not None else tokens[-1]
            feeds = {
                "inputs_embeds": np.asarray(table[[token]], dtype=np.float32)[None],
                "position_ids": np.full((3, 1, 1), n, np.int64),
                "attention_mask": np.ones((1, n + 1), np.int64),
            }
            logits, past, t = run(feeds, past)
            tokens.append(int(logits.argmax()))
            rows.append(logits)
            times.append(t)
            n += 1
        return tokens, rows, times, prefill_s

    decode(None)  # warm-up
    tokens, rows, times, prefill_s = decode(None)
    out = {"load_s": load_s, "prefill_s": prefill_s, "step_s": float(np.median(times[2:])), "tokens": tokens}
    if reference is not None:  # teacher-forced on the reference's tokens
        _, rows, _, _ = decode(reference)
    np.save(logits_out, np.stack(rows))
    out["peak_gb"] = peak_rss_gb()
    return out


def compare(args: argparse.Namespace) -> None:
    from colrag.vlm.bundle import load_verified_manifest

    manifest = load_verified_manifest(args.bundle, "generator")
    decoders = [args.bundle / manifest["graphs"]["decoder"]] + [d / "decoder.onnx" for d in args.decoders]
    print(f"load {os.getloadavg()}")
    print(
        "| decoder | weights (GB) | load (s) | prefill (s) | decode (s/token, median step) | greedy tokens equal | "
        "teacher-forced top-1 equal | logits cosine min / mean | peak RSS (GB) |\n|---|---|---|---|---|---|---|---|---|"
    )
    ref: tuple[list[int], np.ndarray] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = Path(tmp) / "reference.json"
        for decoder in decoders:
            cmd = [sys.executable, __file__, "worker", str(args.bundle), str(decoder)]
            cmd += ["--prompt", str(args.prompt), "--steps", str(args.steps), "--logits-out", f"{tmp}/logits.npy"]
            if ref is not None:
                cmd += ["--reference", str(ref_file)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(decoder, "failed", proc.stderr[-2000:], flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            logits = np.load(f"{tmp}/logits.npy")
            if ref is None:
                ref = (r["tokens"], logits)
                ref_file.write_text(json.dumps(r["tokens"][:-1]))
            same = sum(a == b for a, b in zip(r["tokens"], ref[0], strict=True))
            cos = (logits * ref[1]).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(ref[1], axis=-1)
            top1 = int((logits.argmax(-1) == ref[1].argmax(-1)).sum())
            data = Path(str(decoder) + ".data")
            data = data if data.exists() else decoder.with_suffix(".q.onnx.data")
            size = data.stat().st_size / 1e9 if data.exists() else float("nan")
            print(
                f"| {decoder.parent.name} | {size:.2f} | {r['load_s']:.1f} | {r['prefill_s']:.2f} | "
                f"**{r['step_s']:.4f}** | {same}/{len(ref[0])} | {top1}/{len(ref[0])} | "
                f"{cos.min():.4f} / {cos.mean():.4f} | {r['peak_gb']:.1f} |",
                flush=True,
            )
    print(f"load {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("bundle", type=Path)
    q.add_argument("checkpoint", type=Path)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--bits", type=int, choices=(4, 8), default=4)
    q.add_argument("--block", type=int, default=32)
    q.add_argument("--lm-head-bits", type=int, choices=(4, 8), default=None)
    q.add_argument("--lm-head-block", type=int, default=None)
    q.add_argument("--accuracy-level", type=int, default=4)
    c = sub.add_parser("compare")
    c.add_argument("bundle", type=Path)
    c.add_argument("decoders", type=Path, nargs="*")
    c.add_argument("--prompt", type=int, default=780)
    c.add_argument("--steps", type=int, default=24)
    w = sub.add_parser("worker")
    w.add_argument("bundle", type=Path)
    w.add_argument("decoder", type=Path)
    w.add_argument("--prompt", type=int, default=780)
    w.add_argument("--steps", type=int, default=24)
    w.add_argument("--reference", type=Path)
    w.add_argument("--logits-out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "quantize":
        if args.out.resolve() == args.bundle.resolve():
            raise SystemExit("--out must be a new folder, not the bundle")
        args.lm_head_bits = args.lm_head_bits or args.bits
        args.lm_head_block = args.lm_head_block or args.block
        quantize(args)
    elif args.cmd == "compare":
        compare(args)
    else:
        reference = json.loads(args.reference.read_text()) if args.reference else None
        print(json.dumps(worker(args.bundle, args.decoder, args.prompt, args.steps, reference, args.logits_out)))


if __name__ == "__main__":
    main()
