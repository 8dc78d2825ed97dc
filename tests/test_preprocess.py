"""The numpy/Pillow port of the Qwen2-VL image processor equals transformers'.

The reference is `Qwen2VLImageProcessorPil`: the PIL-based processor ColQwen2 was
trained with (transformers 4.x's Qwen2VLImageProcessor), and the one transformers 5
builds here, where torchvision is absent. With torchvision, transformers 5 resizes with
torch's int16 kernel instead; that path differs by at most 2 uint8 levels (tested).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from colrag.errors import InputError
from colrag.vlm.constants import GENERATOR_MAX_PIXELS, RETRIEVER_MAX_PIXELS
from colrag.vlm.preprocess import ImageProcessorConfig, preprocess_image, smart_resize, to_rgb, vision_rot_pos_ids

MIN_PIXELS = 4 * 28 * 28
CAPS = {"retriever-cap": RETRIEVER_MAX_PIXELS, "generator-cap": GENERATOR_MAX_PIXELS}


def page(width: int, height: int, seed: int) -> Image.Image:
    """Noise plus drawn boxes, lines and text-like strokes."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(150, 256, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, max(1, width - 4))), int(rng.integers(0, max(1, height - 4)))
        x1, y1 = x0 + int(rng.integers(2, width // 3 + 4)), y0 + int(rng.integers(2, height // 3 + 4))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
        draw.line([x0, y1, x1, y0], fill=(0, 0, 0), width=2)
    return img


def transparent(width: int, height: int, seed: int) -> Image.Image:
    img = page(width, height, seed).convert("RGBA")
    alpha = np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)
    img.putalpha(Image.fromarray(alpha))
    return img


CASES = {
    "portrait-page": lambda: page(1240, 1754, seed=1),
    "landscape-slide": lambda: page(1920, 1080, seed=2),
    "extreme-aspect": lambda: page(3000, 60, seed=3),
    "tiny": lambda: page(20, 20, seed=4),
    "rgba": lambda: transparent(500, 400, seed=5),
    "grayscale": lambda: page(640, 480, seed=6).convert("L"),
    "palette": lambda: page(300, 700, seed=7).convert("P"),
}


@pytest.mark.parametrize("cap", sorted(CAPS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_values_equal_transformers(case, cap):
    transformers = pytest.importorskip("transformers")
    image = CASES[case]()
    ref = transformers.Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=CAPS[cap])(
        images=[image], return_tensors="np"
    )
    got = preprocess_image(image, ImageProcessorConfig(), min_pixels=MIN_PIXELS, max_pixels=CAPS[cap])
    assert got.grid_thw.tolist() == ref["image_grid_thw"][0].tolist()
    assert got.pixel_values.shape == ref["pixel_values"].shape and got.pixel_values.dtype == np.float32
    assert np.abs(got.pixel_values - ref["pixel_values"]).max() <= 1e-5
    assert got.n_tokens == got.pixel_values.shape[0] // 4


@pytest.mark.slow  # imports torch
@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 16, 12), (1, 2, 40), (2, 6, 4)])
def test_rot_pos_ids_equal_transformers(grid):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.vision_utils import get_vision_position_ids

    want = get_vision_position_ids(torch.tensor([grid]), 2).numpy()
    got = vision_rot_pos_ids(np.array(grid))
    assert got.dtype == np.int64 and got.shape == want.shape and (got == want).all()


def test_smart_resize_equals_transformers_and_stays_inside_the_caps():
    transformers_resize = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").smart_resize
    sizes = [(1754, 1240), (60, 3000), (20, 20), (10000, 7000), (28, 5600), (1, 200), (600, 3), (5, 5)]
    for h, w in sizes:
        for cap in CAPS.values():
            rh, rw = smart_resize(h, w, 28, MIN_PIXELS, cap)
            assert (rh, rw) == transformers_resize(h, w, factor=28, min_pixels=MIN_PIXELS, max_pixels=cap)
            assert rh % 28 == 0 and rw % 28 == 0


def test_extreme_aspect_ratio_is_a_clear_error():
    with pytest.raises(InputError, match="aspect ratio") as info:
        smart_resize(10, 5000)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="aspect ratio"):
        preprocess_image(Image.new("RGB", (4020, 20)))


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but carries none: decoding it would fail."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(header_only_png(21_000, 20_000))  # 420 Mpx > MAX_DECODE_PIXELS, 1.3 GB as RGB
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # let PIL open it: our own guard must catch it
    with Image.open(path) as image, pytest.raises(InputError, match="too large"):
        preprocess_image(image)  # a decode attempt would raise a PIL error instead (no pixel data)


def test_modes_are_converted_like_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.image_transforms import convert_to_rgb

    base = transparent(64, 48, seed=9)
    for image in [
        base,
        base.convert("LA"),
        base.convert("RGB").convert("CMYK"),
        base.convert("L"),
        base.convert("RGB").convert("P"),
    ]:
        assert (np.asarray(to_rgb(image)) == convert_to_rgb(image, return_numpy=True)).all(), image.mode
    del transformers


def test_config_reads_both_layouts(tmp_path):
    old = tmp_path / "old.json"
    old.write_text('{"min_pixels": 3136, "max_pixels": 602112, "patch_size": 14}')
    new = tmp_path / "new.json"
    new.write_text('{"size": {"shortest_edge": 3136, "longest_edge": 1003520}, "image_mean": [0.5, 0.5, 0.5]}')
    assert ImageProcessorConfig.from_json(old).max_pixels == 602112
    cfg = ImageProcessorConfig.from_json(new)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.image_mean) == (3136, 1003520, (0.5, 0.5, 0.5))
    assert ImageProcessorConfig.from_json(tmp_path / "missing.json") == ImageProcessorConfig()


def test_config_reads_the_checkpoint_file():
    from tests.conftest import require_shared
    from tests.tiny_models import TOKENIZER_DIR

    require_shared()
    cfg = ImageProcessorConfig.from_json(TOKENIZER_DIR / "preprocessor_config.json")
    assert (cfg.min_pixels, cfg.max_pixels, cfg.patch_size, cfg.merge_size) == (3136, 1003520, 14, 2)
