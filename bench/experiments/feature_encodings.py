"""Do stored page features change greedy answers? float16 and int8-row against the float32 features.

    python bench/experiments/feature_encodings.py RETRIEVER_BUNDLE GENERATOR_BUNDLE

The generator must share the retriever's vision tower (tests/generator_fixtures.py builds
such tiny bundles: tiny_retriever_bundle + tiny_shared_generator_bundle). 8 synthetic
images x 3 questions (one Japanese), 16 greedy tokens each.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import colrag
from colrag.store import features as pf
from colrag.vlm.image_features import ImageFeatures
from tests.test_generator import synthetic_image

ret_b, gen_b = sys.argv[1], sys.argv[2]
r = colrag.Retriever.load(ret_b, threads=1)
g = colrag.Generator.load(gen_b, threads=1, prefix_cache=False)
qs = ["What does this chart show?", "この図は何を示していますか?", "Summarise the page."]
res = {pf.FLOAT16: [0, 0], pf.INT8_ROW: [0, 0]}
for seed in range(8):
    img = synthetic_image(200 + 20 * seed, 300 - 15 * seed, 100 + seed)
    ((_, f),) = r.embed_pages([img])
    for q in qs:
        base = g.generate(q, images=[f], max_new_tokens=16, min_new_tokens=16).token_ids
        for enc in res:
            x = pf.decode(pf.encode(f.embeds, enc), f.n_tokens, f.embeds.shape[1], enc)
            got = g.generate(
                q, images=[ImageFeatures(x, f.grid_thw, f.vision_hash)], max_new_tokens=16, min_new_tokens=16
            ).token_ids
            res[enc][0] += got == base
            res[enc][1] += 1
print({k: f"{a}/{b} answers identical over 16 greedy tokens" for k, (a, b) in res.items()})
