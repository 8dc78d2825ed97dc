"""Answer speed: transformers Qwen2VLForConditionalGeneration fp32 vs colrag bundles, side by side.

    python bench/bench_generate.py --checkpoint ~/.cache/colrag-bench/qwen2vl-2b-random \
        --bundle fp32=~/.cache/colrag-bench/bundles/generator \
        --bundle int8=~/.cache/colrag-bench/bundles/generator-int8 [--runs 2]

One real PDF page rendered at the generator's resolution, the question "What does the
chart show?", 32 new tokens greedy (min_new_tokens = 32 so every run decodes the same
count). Each variant in a fresh process: one warm-up, then --runs runs (median ± half
range). Time to first token = vision + prefill (+ first sampling step); for colrag
with the page-prefix cache off, so every run pays the vision tower and the whole
prefill. "follow-up" is the time to the first token of a second, different question on
the same page with the cache on (what `colrag ask -i` and a repeated `colrag ask` get).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import machine, peak_rss_gb, render_page, run_worker, side_by_side_args, summary
from bench._util import variants as bench_variants

QUESTION = "What does the chart show?"
FOLLOW_UPS = ["Which year is the highest?", "What is the title of the page?", "Summarise the page in one sentence."]
NEW_TOKENS = 32
MAX_PIXELS = 1280 * 28 * 28


def worker(args) -> None:
    image = render_page(Path(args.pdf), args.page, MAX_PIXELS)
    rows = []
    if args.worker == "torch":
        import torch
        from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        from colrag.vlm.tokenization import Tokenizer, chat_prompt_ids

        model = Qwen2VLForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
        proc = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=MAX_PIXELS)
        tok = Tokenizer.from_dir(args.checkpoint)

        def run():
            pix = proc(images=[image], return_tensors="pt")
            ids = chat_prompt_ids(tok, QUESTION, [int(pix["image_grid_thw"][0].prod()) // 4])
            inputs = {
                "input_ids": torch.tensor([ids]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                **pix,
            }
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            total = time.perf_counter() - t0
            return ttft, (NEW_TOKENS - 1) / max(1e-9, total - ttft), out[0, len(ids) :].tolist()
    else:
        import colrag

        g = colrag.Generator.load(args.bundle[-1], prefix_cache=False, backend=args.backend, precision=args.precision)

        def run():
            out = g.generate(QUESTION, [image], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
            return out.vision_s + out.prefill_s, out.decode_tokens_per_s, out.token_ids

    for i in range(args.runs + 1):
        r = run()
        if i:
            rows.append(r)
    follow = []
    if args.worker == "colrag":
        from colrag.vlm.prefix_cache import PrefixCache

        g.prefix_cache = PrefixCache()
        g.generate(QUESTION, [image], max_new_tokens=1)  # the page is read once
        for question in FOLLOW_UPS:
            t0 = time.perf_counter()
            out = g.generate(question, [image], max_new_tokens=1)
            assert out.prefix_cached
            follow.append(time.perf_counter() - t0)  # wall time: preprocessing + cache lookup + question prefill
    print(
        json.dumps(
            {
                "ttft": [r[0] for r in rows],
                "tps": [r[1] for r in rows],
                "follow": follow,
                "tokens": rows[-1][2],
                "peak_gb": peak_rss_gb(),
            }
        )
    )


def main() -> None:
    args = side_by_side_args(__doc__, runs=2).parse_args()
    if args.worker:
        worker(args)
        return
    common = ["--checkpoint", args.checkpoint, "--pdf", args.pdf, "--page", str(args.page), "--runs", str(args.runs)]
    variants = bench_variants(args, "bundle")
    print(f"machine: {machine()}")
    print(
        f"page: {Path(args.pdf).name} p{args.page} at max_pixels {MAX_PIXELS}; {NEW_TOKENS} new tokens greedy; "
        f"runs: {args.runs} after 1 warm-up\n"
    )
    print(
        "| variant | time to first token (s) | decode (tokens/s) | decode (s/token) | follow-up first token "
        "(s) | peak RSS (GB) |"
    )
    print("|---|---|---|---|---|---|")
    tokens = {}
    for name, extra in variants:
        res = run_worker(Path(__file__), common + extra)
        tokens[name] = res.get("tokens")
        if "error" in res:
            print(f"| {name} | failed: {res['error']} | | | | |")
            continue
        spt = [1 / t for t in res["tps"]]
        follow = summary(res["follow"]) if res["follow"] else "(no cache)"
        print(
            f"| {name} | {summary(res['ttft'])} | {summary(res['tps'])} | {summary(spt, 3)} | {follow} "
            f"| {res['peak_gb']:.1f} |",
            flush=True,
        )
    print_agreement(tokens)


def print_agreement(tokens: dict) -> None:
    """Greedy-token agreement of every variant with colrag fp32 (or the first colrag variant) on the same page."""
    base_name = next(
        (n for n in tokens if n == "colrag fp32"), next((n for n in tokens if n.startswith("colrag")), None)
    )
    base = tokens.get(base_name)
    if not base:
        return
    print(f"\ngreedy tokens against {base_name} ({len(base)} new tokens):")
    for name, ids in tokens.items():
        if name == base_name or not ids:
            continue
        same = sum(a == b for a, b in zip(ids, base, strict=False))
        first = next((i for i, (a, b) in enumerate(zip(ids, base, strict=False)) if a != b), None)
        where = "identical" if first is None else f"first difference at token {first + 1}"
        print(f"- {name}: {same}/{len(base)} positions equal, {where}")


if __name__ == "__main__":
    main()
