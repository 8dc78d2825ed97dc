"""Does answering at the index's pixel budget (768·28·28, stored page features) instead of the
generator's (1280·28·28, rendered + vision tower) change greedy answers? On tiny shared bundles.

    python bench/experiments/budget_tradeoff.py RETRIEVER_BUNDLE GENERATOR_BUNDLE PDF [PDF ...]

Indexes the PDFs (page features on) into a temporary index, then for every page asks one
question both ways (16 greedy tokens) and counts identical answers, image tokens and prompt lengths.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import colrag
from colrag.indexer import Indexer
from colrag.render import RenderOptions, open_pdf, render_page
from colrag.store import Index, RetrieverInfo
from colrag.store import features as pf

ret_b, gen_b, *pdfs = sys.argv[1:]
r = colrag.Retriever.load(ret_b, threads=1)
g = colrag.Generator.load(gen_b, threads=1, prefix_cache=False)
with tempfile.TemporaryDirectory() as tmp:
    docs = Path(tmp) / "docs"
    docs.mkdir()
    for pdf in pdfs:
        (docs / Path(pdf).name).symlink_to(Path(pdf).resolve())
    with Index.open_writer(Path(tmp) / "ix", RetrieverInfo.of(r)) as idx:
        Indexer(idx, r).run([docs])
    same = total = 0
    tokens = {"index": [], "full": []}
    with Index.open(Path(tmp) / "ix") as idx:
        snap = idx.snapshot()
        for page in snap.pages:
            feats = pf.read_hit(idx, snap, page.path, page.page_no)
            a = g.generate("What does the chart show?", images=[feats], max_new_tokens=16, min_new_tokens=16)
            with open_pdf(page.path) as doc:
                image = render_page(doc, page.page_no - 1, RenderOptions(target_pixels=g.max_pixels)).image
            b = g.generate("What does the chart show?", images=[image], max_new_tokens=16, min_new_tokens=16)
            same += a.token_ids == b.token_ids
            total += 1
            tokens["index"].append(a.n_image_tokens)
            tokens["full"].append(b.n_image_tokens)
print(f"{same}/{total} pages: identical 16-token greedy answers at the index's budget and at the generator's")
print(
    f"image tokens per page: index budget mean {sum(tokens['index']) / total:.0f}, generator budget "
    f"mean {sum(tokens['full']) / total:.0f}"
)
