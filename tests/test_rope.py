"""colrag.vlm.rope.get_rope_index equals transformers' Qwen2VLModel.get_rope_index."""

from __future__ import annotations

import numpy as np
import pytest

from colrag.vlm.constants import IMAGE_PAD_ID
from colrag.vlm.rope import decode_position_ids, get_rope_index
from colrag.vlm.tokenization import pad_left

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference_model():
    from transformers import Qwen2VLModel

    from tests.tiny_models import tiny_qwen2vl_config

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


def test_image_row_and_text_only_row_in_one_batch(reference_model):
    grids = np.array([[1, 6, 10]])
    ids, mask = pad_left([[9, 9, 9, 9], image_seq([1, 2], grids[0], [3, 4, 5])], 151643)
    got = get_rope_index(ids, grids, mask)
    want = reference(reference_model, ids, grids, mask)
    assert got[0].dtype == np.int64 and got[1].shape == (2, 1)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


def test_real_chat_prompt_with_two_images(reference_model, tokenizer_dir):
    from colrag.vlm.tokenization import Tokenizer, chat_prompt_ids

    grids = np.array([[1, 36, 50], [1, 20, 14]])
    seq = chat_prompt_ids(Tokenizer.from_dir(tokenizer_dir), "この2枚の図を比べて", [int(g.prod()) // 4 for g in grids])
    ids, mask = pad_left([seq, seq[:12]], 151643)  # second row: the text-only system turn, left padded
    got = get_rope_index(ids, grids, mask)
    want = reference(reference_model, ids, grids, mask)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
    # the next decode step continues where transformers' generate would
    step = decode_position_ids(past_length=ids.shape[1], rope_deltas=got[1])
    assert (step[:, 0, 0] == got[0][:, 0].max() + 1).all()
