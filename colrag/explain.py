"""Why this page: which parts of a page image made it match a query (late interaction).

A page is stored as the retriever's vectors for its whole prompt: `n_prefix` text tokens
(`<|im_start|>user\\n<|vision_start|>`), then one vector per merged 2x2 patch of the
resized page, then the prompt's tail. The image rows are ordered row-major over the
merged grid: the image processor emits patches grouped 2x2 per merged cell, cells in
row-major order (reshape (gh/2, 2, 14, gw/2, 2, 14) permuted to (gh/2, gw/2, 2, 2, ...)),
and the vision merger turns each group of 4 consecutive patches into one token.
tests/test_explain.py checks this layout on the real preprocessing.

MaxSim scores a page as Σ over query tokens of max over page rows of q·d. Two maps:

- "contribution" (default): each query token adds its best similarity to the one patch
  that won its max. The map is exactly the share of the page's score that image
  patches earned (query tokens whose best row is a text token of the prompt add
  nothing), so bright = "this is where the score came from". It is sparse: at most one
  cell per query token.
- "max": for each patch, its best similarity to any query token (ColPali's usual
  picture). Smoother and prettier, but a bright cell may not have counted in the score
  because another patch beat it for the same query token.

The default is "contribution" because the question asked is "why did this page rank
here?", and only it answers that faithfully.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .fsutil import atomic_write_bytes
from .vlm.constants import IMAGE_FACTOR, IMAGE_PAD_ID

MODES = ("contribution", "max")
DEFAULT_MODE = "contribution"

# A small sequential colormap (ColorBrewer YlOrRd: pale yellow → orange → red → dark red)
# as (position, RGB) anchors, linearly interpolated: no matplotlib needed. Its high end is
# the darkest and most saturated colour, so the cells that matter most stand out on a
# light page, and faint cells barely tint it.
COLORMAP = np.array(
    [
        [0.00, 255, 237, 160],
        [0.35, 254, 178, 76],
        [0.70, 240, 59, 32],
        [1.00, 165, 0, 38],
    ],
    dtype=np.float32,
)


def merged_grid(
    image_size: tuple[int, int], *, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR
) -> tuple[int, int]:
    """(h, w) of the merged-token grid the retriever sees for an image of `image_size` = (width, height)."""
    from .vlm.preprocess import smart_resize

    width, height = image_size
    rh, rw = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return rh // factor, rw // factor


def image_token_offset(retriever, n_image_tokens: int) -> int:
    """Row of a page's first image token in its stored vectors (`n_prefix`)."""
    return retriever.page_ids(n_image_tokens).index(IMAGE_PAD_ID)


def similarity_map(
    query_vectors: np.ndarray,
    page_vectors: np.ndarray,
    n_prefix: int,
    grid_hw: tuple[int, int],
    *,
    mode: str = DEFAULT_MODE,
) -> np.ndarray:
    """Per-patch share of the query–page late-interaction score, shape `grid_hw` = (h, w).

    query_vectors (n_q, dim), page_vectors (n_rows, dim): the page's stored vectors,
    image rows at [n_prefix, n_prefix + h*w). See the module doc for the two modes.
    """
    if mode not in MODES:
        raise InputError(f"unknown similarity map mode {mode!r}: choose {', '.join(MODES)}")
    q = np.asarray(query_vectors, dtype=np.float32)  # (n_q, dim)
    d = np.asarray(page_vectors, dtype=np.float32)  # (n_rows, dim)
    h, w = (int(x) for x in grid_hw)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise InputError(f"query vectors {q.shape} and page vectors {d.shape} must be 2-D with the same width")
    if n_prefix < 0 or h <= 0 or w <= 0 or n_prefix + h * w > d.shape[0]:
        raise InputError(
            f"the page has {d.shape[0]} vectors, too few for {n_prefix} prompt tokens + a {h}x{w} image grid: "
            "the page image given is not the one that was embedded (render it with the index's options)"
        )
    sims = q @ d.T  # (n_q, n_rows)
    lo, hi = n_prefix, n_prefix + h * w
    if mode == "max":
        return sims[:, lo:hi].max(axis=0).reshape(h, w)  # (h, w)
    best = sims.argmax(axis=1)  # (n_q,) the row each query token's max picked, over the whole page
    out = np.zeros(h * w, dtype=np.float32)  # (h*w,)
    on_image = (best >= lo) & (best < hi)
    np.add.at(out, best[on_image] - lo, sims[np.flatnonzero(on_image), best[on_image]])
    return out.reshape(h, w)


def _colorize(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) → RGB float32 (H, W, 3) through COLORMAP."""
    pos = COLORMAP[:, 0]
    return np.stack([np.interp(v, pos, COLORMAP[:, 1 + c]) for c in range(3)], axis=-1).astype(np.float32)


def render_heatmap(
    page_image, smap: np.ndarray, out_path: str | os.PathLike, *, alpha: float = 0.6, legend: bool = False
) -> Path:
    """Write a PNG: the page in light grayscale under a colour overlay of `smap`; returns its path.

    Each map cell covers its patch of the page (the grid spans the whole page, as the
    resized image did). Cells at or below 0 stay transparent; opacity grows with the
    value, up to `alpha` at the map's maximum. The PNG has the page's size, unless
    `legend` adds a colour-scale strip below it.
    """
    from PIL import Image, ImageDraw

    smap = np.asarray(smap, dtype=np.float32)  # (h, w)
    if smap.ndim != 2 or smap.size == 0:
        raise InputError(f"a similarity map must be 2-D, got shape {smap.shape}")
    width, height = page_image.size
    gray = np.asarray(page_image.convert("L"), dtype=np.float32)  # (H, W)
    base = 60.0 + gray * (150.0 / 255.0)  # lighter and low-contrast gray, so the colours read
    top = float(smap.max())
    norm = np.clip(smap, 0.0, None) / top if top > 0 else np.zeros_like(smap)  # (h, w) in [0, 1]
    cells = Image.fromarray(norm).resize((width, height), Image.Resampling.NEAREST)
    v = np.asarray(cells, dtype=np.float32)  # (H, W)
    a = (alpha * np.sqrt(v))[..., None]  # (H, W, 1): faint cells stay visible, empty ones transparent
    rgb = base[..., None] * (1.0 - a) + _colorize(v) * a  # (H, W, 3)
    out = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    if legend:
        out = _with_legend(out, top, ImageDraw)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _with_legend(image, top: float, ImageDraw):
    from PIL import Image

    width, height = image.size
    strip_h = 28
    canvas = Image.new("RGB", (width, height + strip_h), (255, 255, 255))
    canvas.paste(image, (0, 0))
    bar_w = max(40, width // 3)
    ramp = _colorize(np.tile(np.linspace(0, 1, bar_w, dtype=np.float32), (10, 1)))  # (10, bar_w, 3)
    canvas.paste(Image.fromarray(ramp.astype(np.uint8)), (8, height + 9))
    draw = ImageDraw.Draw(canvas)
    draw.text((bar_w + 14, height + 8), f"0 … {top:.3g}  (score share per patch)", fill=(0, 0, 0))
    return canvas


def explain_page(
    retriever,
    query: str,
    page_image,
    page_vectors: np.ndarray,
    out_path: str | os.PathLike,
    *,
    mode: str = DEFAULT_MODE,
    legend: bool = True,
) -> Path:
    """One call for `search --explain` / `ask --show`: the heatmap PNG of `query` on a stored page.

    `page_image` must be the page as it was embedded (same render options, same size);
    `page_vectors` (n_rows, dim) its stored vectors (fp16 is fine).
    """
    h, w = merged_grid(page_image.size, min_pixels=retriever.min_pixels, max_pixels=retriever.max_pixels)
    n_prefix = image_token_offset(retriever, h * w)
    expected = len(retriever.page_ids(h * w))
    if len(page_vectors) != expected:
        raise InputError(
            f"the stored page has {len(page_vectors)} vectors, the page image gives {expected}: "
            "render the page with the index's render options"
        )
    [q] = retriever.embed_queries([query])  # (n_q, dim)
    smap = similarity_map(q, page_vectors, n_prefix, (h, w), mode=mode)
    return render_heatmap(page_image, smap, out_path, legend=legend)
