"""Time one decoder step against a k/v cache of a given length (random values: speed does not depend on them).

    python bench/bench_decode_step.py ~/.cache/colrag-bench/bundles/generator-int8/decoder.onnx --past 16 1300

Isolates what a decode step costs as the prompt grows (weights are read once per step
whatever the past; attention and cache copies grow with it). Median of 6 steps after 2
warm-ups, through colrag's session factory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from colrag.vlm.runtime import create_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("decoder", type=Path)
    ap.add_argument("--past", type=int, nargs="+", default=[16, 1300])
    args = ap.parse_args()
    sess = create_session(args.decoder)
    inputs = sess.get_inputs()
    past_inputs = inputs[3:]
    hidden = int(inputs[0].shape[-1])
    kv_heads, head_dim = int(past_inputs[0].shape[1]), int(past_inputs[0].shape[3])
    rng = np.random.default_rng(0)
    print("| past tokens | decode step (s) |\n|---|---|")
    for n_past in args.past:
        feeds = {
            "inputs_embeds": rng.standard_normal((1, 1, hidden)).astype(np.float32),
            "position_ids": np.full((3, 1, 1), n_past, np.int64),
            "attention_mask": np.ones((1, n_past + 1), np.int64),
        }
        feeds.update(
            {i.name: rng.standard_normal((1, kv_heads, n_past, head_dim)).astype(np.float32) for i in past_inputs}
        )
        times = []
        for _ in range(8):
            t = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t)
        print(f"| {n_past} | {np.median(times[2:]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
