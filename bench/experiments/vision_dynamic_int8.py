"""Vision tower on one real page: fp32 vs the bundle's MatMulNBits int8 vs MatMulInteger
dynamic int8 (onnxruntime's quantize_dynamic of the fp32 graph: int8 weights per output
channel, activations quantized per tensor at run time). Not adopted yet; see
docs/BENCHMARKS.md, "Page and query embedding".

    python bench/experiments/vision_dynamic_int8.py   # needs the fp32 and int8 retriever bundles
                                                       # of bench/full_checkpoints.py in ~/.cache/colrag-bench
"""

import logging
import os
import time

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

import colrag
from colrag.render import render_pdf
from colrag.vlm.preprocess import preprocess_image, vision_rot_pos_ids
from colrag.vlm.runtime import create_session

logging.disable(logging.WARNING)
B = os.path.expanduser("~/.cache/colrag-bench/bundles")
dst = "/tmp/dynq/vision.dyn.onnx"
os.makedirs("/tmp/dynq", exist_ok=True)
if not os.path.exists(dst):
    t = time.perf_counter()
    quantize_dynamic(
        B + "/retriever/vision.onnx",
        dst,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        use_external_data_format=True,
    )
    print("quantize_dynamic", round(time.perf_counter() - t), "s", flush=True)
r = colrag.Retriever.load(B + "/retriever-int8")
img = render_pdf("/work/shared/data/pdfs/03_chart_usda_ag_energy_roundup.pdf")[0].image
pre = preprocess_image(img, r.image_config, min_pixels=r.min_pixels, max_pixels=r.max_pixels)
feeds = {"pixel_values": pre.pixel_values, "rot_pos_ids": vision_rot_pos_ids(pre.grid_thw)}
del r

outs = {}
for name, path in [
    ("fp32", B + "/retriever/vision.onnx"),
    ("MatMulNBits int8 (bundle)", B + "/retriever-int8/vision.onnx"),
    ("MatMulInteger dynamic int8", dst),
]:
    if not os.path.exists(path):
        path = next(
            os.path.join(os.path.dirname(path), f)
            for f in os.listdir(os.path.dirname(path))
            if f.startswith("vision") and f.endswith(".onnx")
        )
    s = create_session(path)
    s.run(None, feeds)
    ts = []
    for _ in range(2):
        t = time.perf_counter()
        y = s.run(None, feeds)[0]
        ts.append(time.perf_counter() - t)
    outs[name] = y
    del s
    c = ""
    if name != "fp32":
        a, b = outs["fp32"], y
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        c = f"cosine vs fp32 mean {cos.mean():.5f} min {cos.min():.5f}"
    print(f"{name}: {min(ts):.2f}-{max(ts):.2f} s  {c}", flush=True)
