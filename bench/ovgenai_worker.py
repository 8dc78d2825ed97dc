"""The `openvino-genai` row of bench/bench_ask.py: what a CPU user might pick instead of colrag.

Runs in its own Python environment (not a colrag dependency), with a Qwen2-VL checkpoint
exported by optimum-intel:

    python3 -m venv ~/ovgenai && ~/ovgenai/bin/pip install "optimum-intel[openvino]" openvino-genai \\
        torch --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
    ~/ovgenai/bin/optimum-cli export openvino -m CHECKPOINT --task image-text-to-text --weight-format int8 OUT

bench_ask.py (--ovgenai-python ~/ovgenai/bin/python --ovgenai-model OUT) renders the same
pages it gives colrag to PNG files and runs this script on them; it prints one JSON line with
the keys bench_ask's workers print: first token of QUESTION about page 1 (`one`) and about
the three pages (`three`), a follow-up question in the same chat (`follow`: the pipeline keeps
the conversation's k/v, as colrag's page-prefix cache does), decode tokens/s (`tps`), peak RSS.
The pipeline applies the checkpoint's own chat template and image preprocessing (the pages are
already within its pixel cap, so its grid equals colrag's). Greedy tokens are not compared:
its prompt is not colrag's token for token.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="optimum-intel export folder")
    ap.add_argument("--images", nargs="+", required=True, help="the rendered pages (PNG), page 1 first")
    ap.add_argument("--question", required=True)
    ap.add_argument("--follow-up", required=True)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--precision", default="bf16", help="INFERENCE_PRECISION_HINT (bf16 or f32)")
    args = ap.parse_args()

    import numpy as np
    import openvino as ov
    import openvino_genai
    from PIL import Image

    t0 = time.perf_counter()
    pipe = openvino_genai.VLMPipeline(args.model, "CPU", INFERENCE_PRECISION_HINT=args.precision)
    load_s = time.perf_counter() - t0
    images = [ov.Tensor(np.asarray(Image.open(p).convert("RGB"))[None]) for p in args.images]

    def config(n: int) -> openvino_genai.GenerationConfig:
        c = openvino_genai.GenerationConfig()
        c.max_new_tokens = n
        c.min_new_tokens = n
        c.do_sample = False
        return c

    def first_token(imgs: list, question: str) -> float:
        result = pipe.generate(question, images=imgs, generation_config=config(1))
        return float(result.perf_metrics.get_ttft().mean) / 1000.0

    first_token(images[:1], args.question)  # warm-up (first inference compiles shapes)
    out: dict = {"load_s": load_s}
    out["one"] = [first_token(images[:1], args.question) for _ in range(args.runs)]
    out["three"] = [first_token(images, args.question) for _ in range(args.runs)]
    pipe.start_chat()
    first_token(images[:1], args.question)
    out["follow"] = [first_token([], args.follow_up)]
    pipe.finish_chat()
    result = pipe.generate(args.question, images=images[:1], generation_config=config(args.new_tokens))
    out["tps"] = 1000.0 / float(result.perf_metrics.get_tpot().mean)
    out["tokens"] = None
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(out))


if __name__ == "__main__":
    main()
