"""A page's vision-tower output, computed once and reused: by the index, then by `ask`.

ColQwen2's LoRA leaves Qwen2-VL's vision tower untouched, so the merged image
embeddings the retriever computes while indexing a page are exactly what the
generator's vision tower would compute for the same pixels. `ImageFeatures` carries
them (with the grid that fixes the page's M-RoPE positions and the hash of the tower
that made them) from the retriever to the store and from the store to the generator:

    vectors, feats = retriever.embed_pages([image])[0]
    g.generate("What does the chart show?", images=[feats])   # no vision pass

`check` refuses features that do not fit the model they are given to (another tower,
another hidden size, a grid that does not match the row count, non-finite values):
such features are recomputed, never fed to the decoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class ImageFeatures:
    """Merged image embeddings of one image: `embeds` (n_image_tokens, hidden) float32,
    `grid_thw` (3,) int64 (temporal, height, width patches before the 2x2 merge)."""

    embeds: np.ndarray
    grid_thw: np.ndarray
    vision_hash: str | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])

    def check(self, hidden_size: int, spatial_merge_size: int = 2, vision_hash: str | None = None) -> None:
        """Raise InputError unless these features can stand for an image in a model with this hidden size
        (and, when both hashes are known, this vision tower)."""
        grid = np.asarray(self.grid_thw)
        if grid.shape != (3,) or np.any(grid <= 0):
            raise InputError(f"image features with a malformed grid {grid.tolist()}")
        want = int(np.prod(grid)) // spatial_merge_size**2
        if self.embeds.ndim != 2 or self.embeds.shape != (want, hidden_size):
            raise InputError(
                f"image features of shape {tuple(self.embeds.shape)}, "
                f"expected ({want}, {hidden_size}) for grid {grid.tolist()}"
            )
        if vision_hash and self.vision_hash and vision_hash != self.vision_hash:
            raise InputError("image features from another vision tower")
        if not np.all(np.isfinite(self.embeds)):
            raise InputError("image features with non-finite values")


def image_list(images: Any) -> list:
    """images as a list: None, one image (PIL image, path or ImageFeatures) or a sequence of them."""
    from PIL import Image

    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, Image.Image, ImageFeatures)):
        return [images]
    return list(images)
