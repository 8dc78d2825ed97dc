"""3-D M-RoPE position ids of Qwen2-VL (a numpy port of `Qwen2VLModel.get_rope_index`).

Text tokens advance all three axes together; the tokens of an image take
(temporal, row, column) positions over its merged grid, starting at the current
position; the text after an image resumes at max(grid_h, grid_w)/merge past it.
Padding positions (attention_mask == 0) are 0, as in transformers.
"""

from __future__ import annotations

import numpy as np

from .constants import IMAGE_PAD_ID, MERGE_SIZE


def get_rope_index(
    input_ids,
    image_grid_thw=None,
    attention_mask=None,
    *,
    spatial_merge_size: int = MERGE_SIZE,
    image_token_id: int = IMAGE_PAD_ID,
):
    """position_ids (3, B, S) int64 and rope_deltas (B, 1) int64.

    rope_deltas[b] = max position + 1 - number of real tokens: a decode step at
    past length L sits at position L + delta on all three axes.
    """
    input_ids = np.asarray(input_ids)
    b, s = input_ids.shape
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    grids = iter([] if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3).tolist())
    position_ids = np.zeros((3, b, s), dtype=np.int64)
    deltas = np.zeros((b, 1), dtype=np.int64)
    for row in range(b):
        keep = mask[row].astype(bool)
        ids = input_ids[row][keep]
        pieces, cur, i = [], 0, 0
        while i < len(ids):
            if ids[i] == image_token_id:
                grid = next(grids, None)
                if grid is None:
                    raise ValueError("input_ids hold more images than image_grid_thw has rows")
                t, h, w = grid
                lh, lw = h // spatial_merge_size, w // spatial_merge_size
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
                pieces.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + cur)  # (3, t*lh*lw)
                cur += max(h, w) // spatial_merge_size
                i += t * lh * lw
            else:
                j = i
                while j < len(ids) and ids[j] != image_token_id:
                    j += 1
                pieces.append(np.broadcast_to(np.arange(cur, cur + j - i), (3, j - i)))
                cur += j - i
                i = j
        if not pieces:
            continue
        positions = np.concatenate(pieces, axis=1)  # (3, n_real)
        position_ids[:, row, keep] = positions
        deltas[row, 0] = positions.max() + 1 - len(ids)
    return position_ids, deltas


def decode_position_ids(past_length: int, rope_deltas, length: int = 1) -> np.ndarray:
    """Positions (3, B, length) for tokens appended after `past_length` cached ones."""
    deltas = np.asarray(rope_deltas, dtype=np.int64).reshape(-1, 1)  # (B, 1)
    pos = past_length + deltas + np.arange(length, dtype=np.int64)  # (B, length)
    return np.broadcast_to(pos, (3, *pos.shape)).copy()
