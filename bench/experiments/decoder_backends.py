"""The generator decoder on onnxruntime and on OpenVINO (k/v passed in and out, or kept in the
request's state): prefill time, decode s/token and greedy agreement, same inputs, one process each.

    python bench/experiments/decoder_backends.py BUNDLE [--prompt 780] [--steps 24] [--variants ort ov-bf16 ...]

The prompt is `--prompt` random rows of the bundle's embedding table (a stand-in for page
features; speed does not depend on values), positions 0..S-1 on all three rope axes. Then
`--steps` greedy tokens, each embedded from the table. Each variant runs in a fresh process
(warm-up prefill first); tokens are compared with the first variant's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def worker(bundle: Path, variant: str, n_prompt: int, steps: int) -> dict:
    from colrag.vlm import backends
    from colrag.vlm.bundle import load_verified_manifest

    manifest = load_verified_manifest(bundle, "generator")
    table = np.load(bundle / manifest["graphs"]["embed_tokens"], mmap_mode="r")
    path = bundle / manifest["graphs"]["decoder"]
    n_layers, kv, hd = int(manifest["num_layers"]), int(manifest["num_kv_heads"]), int(manifest["head_dim"])
    past_names = [f"past_{k}_{i}" for i in range(n_layers) for k in ("key", "value")]
    out_names = ["logits"] + [f"present_{k}_{i}" for i in range(n_layers) for k in ("key", "value")]
    backend, _, precision = variant.partition("/")
    precision, _, mode = precision.partition("/")  # openvino/bf16/stateless: k/v passed in and out
    if mode == "stateless":
        os.environ["COLRAG_OV_STATEFUL"] = "0"
    t0 = time.perf_counter()
    session = backends.open_session(path, graph="decode", backend=backend, precision=precision or "f32")
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 150000, n_prompt)
    embeds = np.asarray(table[ids], dtype=np.float32)[None]

    def prefill():
        past = [np.zeros((1, kv, 0, hd), np.float32)] * len(past_names)
        feeds = {
            "inputs_embeds": embeds,
            "position_ids": np.broadcast_to(np.arange(n_prompt), (3, 1, n_prompt)).astype(np.int64),
            "attention_mask": np.ones((1, n_prompt), np.int64),
        }
        t = time.perf_counter()
        outs = session.run({**feeds, **dict(zip(past_names, past, strict=True))}, out_names)
        return time.perf_counter() - t, backends.as_numpy(outs[0]), list(outs[1:])

    prefill()  # warm-up
    times = []
    for _ in range(2):
        t, logits, past = prefill()
        times.append(t)
    tokens = [int(logits[0, -1].argmax())]
    first_logits = logits[0, -1].copy()
    n = n_prompt
    step_times = []
    for _ in range(steps - 1):
        feeds = {
            "inputs_embeds": np.asarray(table[[tokens[-1]]], dtype=np.float32)[None],
            "position_ids": np.full((3, 1, 1), n, np.int64),
            "attention_mask": np.ones((1, n + 1), np.int64),
        }
        t = time.perf_counter()
        outs = session.run({**feeds, **dict(zip(past_names, past, strict=True))}, out_names)
        step_times.append(time.perf_counter() - t)
        past = list(outs[1:])
        n += 1
        tokens.append(int(backends.as_numpy(outs[0])[0, -1].argmax()))
    from bench._util import peak_rss_gb

    return {
        "variant": variant,
        "load_s": load_s,
        "prefill_s": times,
        "step_s": float(np.median(step_times[2:])) if len(step_times) > 3 else None,
        "tokens": tokens,
        "first_logits": first_logits.tolist(),
        "peak_gb": peak_rss_gb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--prompt", type=int, default=780)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--variants", nargs="+", default=["onnxruntime", "openvino/f32", "openvino/bf16"])
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.bundle, args.worker, args.prompt, args.steps)))
        return
    print(f"load {os.getloadavg()}")
    ref = None
    for variant in args.variants:
        cmd = [sys.executable, __file__, str(args.bundle), "--prompt", str(args.prompt), "--steps", str(args.steps)]
        proc = subprocess.run([*cmd, "--worker", variant], capture_output=True, text=True)
        if proc.returncode:
            print(variant, "failed", proc.stderr[-2000:], flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        logits = np.array(r.pop("first_logits"))
        if ref is None:
            ref = (r["tokens"], logits)
        same = sum(a == b for a, b in zip(r["tokens"], ref[0], strict=True))
        cos = float(logits @ ref[1] / np.linalg.norm(logits) / np.linalg.norm(ref[1]))
        prefill = " / ".join(f"{t:.2f}" for t in r["prefill_s"])
        print(
            f"| {variant} | load {r['load_s']:.1f} s | prefill {prefill} s | decode {r['step_s']:.4f} s/token | "
            f"tokens {same}/{len(ref[0])} equal | first logits cosine {cos:.5f} | peak {r['peak_gb']:.1f} GB |",
            flush=True,
        )
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
