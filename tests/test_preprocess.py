"""The numpy/Pillow port of the Qwen2-VL image processor equals transformers'."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from colrag.errors import InputError
from colrag.preprocess import ImageProcessorConfig, preprocess_image, smart_resize, vision_rot_pos_ids
from tests.test_retriever import synthetic_page

RETRIEVER_MAX = 768 * 28 * 28
GENERATOR_MAX = 1280 * 28 * 28

CASES = {
    "portrait-page": lambda: synthetic_page(1240, 1754, seed=1),
    "landscape-slide": lambda: synthetic_page(1920, 1080, seed=2),
    "extreme-aspect": lambda: synthetic_page(3000, 60, seed=3),
    "tiny": lambda: synthetic_page(20, 20, seed=4),
    "rgba": lambda: synthetic_page(500, 400, seed=5).convert("RGBA"),
    "grayscale": lambda: synthetic_page(640, 480, seed=6).convert("L"),
}


@pytest.fixture(scope="module")
def reference_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLImageProcessorPil


@pytest.mark.parametrize("max_pixels", [RETRIEVER_MAX, GENERATOR_MAX], ids=["retriever-cap", "generator-cap"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_values_equal_transformers(reference_processor, case, max_pixels):
    image = CASES[case]()
    ref = reference_processor(min_pixels=4 * 28 * 28, max_pixels=max_pixels)(images=[image], return_tensors="np")
    got = preprocess_image(image, ImageProcessorConfig(), min_pixels=4 * 28 * 28, max_pixels=max_pixels)
    assert got.grid_thw.tolist() == ref["image_grid_thw"][0].tolist()
    assert got.pixel_values.shape == ref["pixel_values"].shape
    assert got.pixel_values.dtype == np.float32
    assert np.abs(got.pixel_values - ref["pixel_values"]).max() <= 1e-5
    assert got.n_tokens == got.pixel_values.shape[0] // 4


@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 16, 12), (1, 2, 40)])
def test_rot_pos_ids_equal_transformers(grid):
    torch = pytest.importorskip("torch")
    from transformers.vision_utils import get_vision_position_ids

    want = get_vision_position_ids(torch.tensor([grid]), 2).numpy()
    assert (vision_rot_pos_ids(np.array(grid)) == want).all()


def test_smart_resize_stays_inside_the_caps():
    for h, w in [(1754, 1240), (60, 3000), (20, 20), (10000, 7000)]:
        rh, rw = smart_resize(h, w, 28, 4 * 28 * 28, RETRIEVER_MAX)
        assert rh % 28 == 0 and rw % 28 == 0
        assert 4 * 28 * 28 <= rh * rw <= RETRIEVER_MAX


def test_extreme_aspect_ratio_is_a_clear_error():
    with pytest.raises(InputError, match="aspect ratio"):
        smart_resize(10, 5000)


def test_decompression_bomb_is_refused_before_resizing():
    image = Image.new("1", (30_000, 30_000))  # 900 Mpx, 110 MB as a bitmap
    with pytest.raises(InputError, match="too large"):
        preprocess_image(image)


def test_config_reads_both_layouts(tmp_path):
    old = tmp_path / "old.json"
    old.write_text('{"min_pixels": 3136, "max_pixels": 602112, "patch_size": 14}')
    new = tmp_path / "new.json"
    new.write_text('{"size": {"shortest_edge": 3136, "longest_edge": 1003520}}')
    assert ImageProcessorConfig.from_json(old).max_pixels == 602112
    assert ImageProcessorConfig.from_json(new).max_pixels == 1003520
