"""The numpy/Pillow port of the Qwen2-VL image processor equals transformers'.

The reference is the processor a checkpoint's `Qwen2VLProcessor` uses in transformers
5.x: the torchvision-backed `Qwen2VLImageProcessor` (uint8 antialiased bicubic through
torch). Where torchvision is installed the test runs that class itself; everywhere the
same path is replayed from transformers' own pieces plus torch's resize kernel, which is
all torchvision calls. The PIL processor differs from both by up to 2 uint8 levels.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from colrag.constants import CLIP_STD, GENERATOR_MAX_PIXELS, RETRIEVER_MAX_PIXELS
from colrag.errors import InputError
from colrag.preprocess import ImageProcessorConfig, preprocess_image, resize_bicubic, smart_resize, to_rgb, vision_rot_pos_ids

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


def replayed_torchvision_processor(image, max_pixels):
    """transformers' TorchvisionBackend + Qwen2VLImageProcessor, step for step, with torch ops only."""
    torch = pytest.importorskip("torch")
    from transformers.image_transforms import convert_to_rgb
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    x = torch.from_numpy(convert_to_rgb(image, return_numpy=True)).permute(2, 0, 1)[None]  # as process_image does
    h, w = hf_smart_resize(x.shape[-2], x.shape[-1], factor=28, min_pixels=MIN_PIXELS, max_pixels=max_pixels)
    if (h, w) != tuple(x.shape[-2:]):  # tvF.resize: uint8 stays uint8 on CPU for BICUBIC
        x = torch.nn.functional.interpolate(x, size=[h, w], mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * (1.0 / 0.00392156862745098)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * (1.0 / 0.00392156862745098)
    x = (x.to(torch.float32) - mean[:, None, None]) / std[:, None, None]
    gh, gw = h // 14, w // 14
    x = x[:, None].expand(1, 2, 3, h, w)  # the frame repeated to temporal_patch_size
    x = x.reshape(1, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, 3 * 2 * 14 * 14).numpy(), [1, gh, gw]


@pytest.mark.parametrize("cap", sorted(CAPS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_values_equal_transformers(case, cap):
    pytest.importorskip("transformers")
    image = CASES[case]()
    want, grid = replayed_torchvision_processor(image, CAPS[cap])
    got = preprocess_image(image, ImageProcessorConfig(), min_pixels=MIN_PIXELS, max_pixels=CAPS[cap])
    assert got.grid_thw.tolist() == grid and got.grid_thw.dtype == np.int64
    assert got.pixel_values.shape == want.shape and got.pixel_values.dtype == np.float32
    assert np.abs(got.pixel_values - want).max() <= 1e-5
    assert got.n_tokens == got.pixel_values.shape[0] // 4


@pytest.mark.parametrize("case", ["portrait-page", "extreme-aspect", "rgba", "tiny"])
def test_pixel_values_equal_the_torchvision_processor_class(case):
    """The class `AutoProcessor` picks for these checkpoints (needs torchvision)."""
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    image = CASES[case]()
    for cap in CAPS.values():
        ref = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=cap)(images=[image], return_tensors="pt")
        got = preprocess_image(image, ImageProcessorConfig(), min_pixels=MIN_PIXELS, max_pixels=cap)
        assert got.grid_thw.tolist() == ref["image_grid_thw"][0].tolist()
        assert np.abs(got.pixel_values - ref["pixel_values"].numpy()).max() <= 1e-5


def test_the_pil_processor_differs_by_at_most_two_levels():
    """Documented deviation: transformers' PIL processor rounds its bicubic differently."""
    transformers = pytest.importorskip("transformers")
    image = CASES["landscape-slide"]()
    ref = transformers.Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=RETRIEVER_MAX_PIXELS)(images=[image], return_tensors="np")
    got = preprocess_image(image, ImageProcessorConfig(), min_pixels=MIN_PIXELS, max_pixels=RETRIEVER_MAX_PIXELS)
    assert got.grid_thw.tolist() == ref["image_grid_thw"][0].tolist()
    assert np.abs(got.pixel_values - ref["pixel_values"]).max() <= 2.01 / 255 / min(CLIP_STD)


@pytest.mark.parametrize("src,dst", [((1754, 1240), (896, 644)), ((60, 3000), (56, 2996)), ((20, 20), (56, 56)), ((97, 31), (97, 300)), ((500, 64), (28, 64))])
def test_resize_is_bit_exact_with_torch(src, dst):
    torch = pytest.importorskip("torch")
    arr = np.random.default_rng(sum(src)).integers(0, 256, size=(*src, 3), dtype=np.uint8)
    want = torch.nn.functional.interpolate(torch.from_numpy(arr).permute(2, 0, 1)[None], size=list(dst), mode="bicubic", antialias=True, align_corners=False)
    assert (resize_bicubic(arr, *dst, band=13) == want[0].permute(1, 2, 0).numpy()).all()


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

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


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
    for image in [base, base.convert("LA"), base.convert("RGB").convert("CMYK"), base.convert("L"), base.convert("RGB").convert("P")]:
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
