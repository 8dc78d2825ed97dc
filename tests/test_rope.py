"""colrag.rope.get_rope_index equals transformers' Qwen2VLModel.get_rope_index."""

from __future__ import annotations

import numpy as np
import pytest

from colrag.constants import IMAGE_PAD_ID
from colrag.rope import decode_position_ids, get_rope_index
from colrag.tokenization import pad_left

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference_model():
    from tests.tiny_models import tiny_qwen2vl_config
    from transformers import Qwen2VLModel

    return Qwen2VLModel(tiny_qwen2vl_config()).eval()


def reference(model, ids, grids, mask):
    t_ids = torch.from_numpy(ids)
    pos, deltas = model.get_rope_index(
        input_ids=t_ids,
        mm_token_type_ids=(t_ids == IMAGE_PAD_ID).int(),
        image_grid_thw=None if grids is None else torch.from_numpy(grids),
        attention_mask=torch.from_numpy(mask),
    )
    return pos.numpy(), deltas.numpy()


def image_seq(prefix, grid, suffix):
    return prefix + [IMAGE_PAD_ID] * (grid[1] * grid[2] // 4) + suffix


def test_two_pages_left_padded(reference_model):
    grids = np.array([[1, 8, 12], [1, 14, 6]])
    seqs = [image_seq([1, 2, 3], g, [4, 5, 6, 7]) for g in grids]
    ids, mask = pad_left(seqs, 151643)
    got = get_rope_index(ids, grids, mask)
    want = reference(reference_model, ids, grids, mask)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


def test_text_only_rows(reference_model):
    ids, mask = pad_left([[5, 6, 7, 8, 9], [10, 11]], 151643)
    got = get_rope_index(ids, None, mask)
    want = reference(reference_model, ids, None, mask)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


def test_two_images_in_one_chat_prompt(reference_model):
    grids = np.array([[1, 4, 6], [1, 10, 4]])
    seq = image_seq([1, 2], grids[0], [3]) + image_seq([], grids[1], [7, 8, 9])
    ids, mask = pad_left([seq], 151643)
    got = get_rope_index(ids, grids, mask)
    want = reference(reference_model, ids, grids, mask)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


def test_decode_positions_continue_after_the_prompt():
    pos = decode_position_ids(past_length=10, rope_deltas=np.array([[-3]]))
    assert pos.shape == (3, 1, 1) and (pos == 7).all()
