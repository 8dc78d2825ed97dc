"""The Qwen2-VL image processor, ported to numpy + Pillow.

Reference: transformers' `Qwen2VLImageProcessorPil`, i.e. the PIL-based processor that
colpali-engine trained ColQwen2 with (transformers 4.x's Qwen2VLImageProcessor) and that
transformers 5 still uses where torchvision is absent. transformers 5 with torchvision
resizes with torch's int16 bicubic instead: about 0.5% of uint8 pixels then differ by
1-2 levels (up to 0.030 in pixel_values). We follow the PIL path, bit for bit.

Steps: RGB (alpha composited on white), smart_resize to multiples of 28 inside the
pixel caps, PIL BICUBIC on uint8, (x - 255*mean) / (255*std) in float32, the frame
duplicated along time, and the patch layout the vision tower expects.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .constants import (
    CLIP_MEAN,
    CLIP_STD,
    GENERATOR_MAX_PIXELS,
    GENERATOR_MIN_PIXELS,
    MAX_DECODE_PIXELS,
    MAX_IMAGE_FILE_PIXELS,
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
)

MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within the caps, aspect kept."""
    if min(height, width) <= 0:
        raise InputError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InputError(
            f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is too extreme (the limit "
            f"is {MAX_ASPECT_RATIO}:1)"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageProcessorConfig:
    patch_size: int = PATCH_SIZE
    merge_size: int = MERGE_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    min_pixels: int = GENERATOR_MIN_PIXELS
    max_pixels: int = GENERATOR_MAX_PIXELS

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ImageProcessorConfig:
        """Read a `preprocessor_config.json` (old min/max_pixels keys or the newer `size` dict)."""
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"unreadable image processor config {path}: {exc}") from exc
        raw = raw.get("image_processor", raw)  # processor_config.json nests it
        size = raw.get("size") or {}
        kw: dict[str, Any] = {}
        for key in ("patch_size", "merge_size", "temporal_patch_size"):
            if key in raw:
                kw[key] = int(raw[key])
        for key in ("image_mean", "image_std"):
            if key in raw:
                kw[key] = tuple(float(v) for v in raw[key])
        min_pixels = raw.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
        max_pixels = raw.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
        if min_pixels:
            kw["min_pixels"] = int(min_pixels)
        if max_pixels:
            kw["max_pixels"] = int(max_pixels)
        return cls(**kw)


@dataclass(frozen=True)
class PreprocessedImage:
    pixel_values: np.ndarray  # (grid_h * grid_w, C * temporal * patch * patch) float32
    grid_thw: np.ndarray  # (3,) int64: (1, grid_h, grid_w) in 14-px patches
    n_tokens: int  # image tokens after the 2x2 merge: grid_h * grid_w / 4


def to_rgb(image):
    """RGB version of any PIL image, as transformers' `convert_to_rgb` does it.

    Images with an alpha band or a transparency key (RGBA, LA, PA, P/RGB with tRNS) are
    composited on white; every other mode (L, P, CMYK, I;16...) goes through PIL's
    convert. The pixel count is checked first, before anything is decoded.
    """
    from PIL import Image

    width, height = image.size
    if width * height > MAX_DECODE_PIXELS:
        raise InputError(f"image is too large ({width}x{height} pixels; the limit is {MAX_DECODE_PIXELS:,})")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


# What Pillow raises on malformed files: a bad PPM header is a ValueError, a bad GIF a
# SyntaxError, truncated data an OSError / EOFError, a broken TIFF tag a struct.error.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


@contextlib.contextmanager
def _opened_image(path: Path, max_pixels: int) -> Iterator[Any]:
    """Image.open (the header only) with its size checked; Pillow's errors become one-line InputErrors."""
    from PIL import Image

    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise InputError(
                        f"image {path} is too large ({width}x{height} = {width * height:,} pixels; "
                        f"the limit is {max_pixels:,})"
                    )
                yield img
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large (the limit is {max_pixels:,} pixels)") from exc
    except _IMAGE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read image {path}: {reason}") from exc


def check_image_file(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_FILE_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file from its header, nothing decoded; InputError when it cannot be used."""
    with _opened_image(Path(path).expanduser(), max_pixels) as img:
        return img.size


def open_image(path: str | os.PathLike, *, target_pixels: int | None = None, max_pixels: int = MAX_IMAGE_FILE_PIXELS):
    """An image file, decoded, as Pillow gives it (any mode); InputError in one line when it cannot be used.

    The size is read from the header and checked against `max_pixels` before anything is
    decoded (Pillow's global limit is not changed). With `target_pixels` (the resolution
    the model will resize to), an image more than twice that size per side is decoded at a
    reduced scale: JPEG through draft() (the decoder skips the detail), others through
    reduce() (a box filter by an integer factor); the usual bicubic resize then starts from
    at least twice the final size.
    """
    with _opened_image(Path(path).expanduser(), max_pixels) as img:
        factor = _reduction(img.width, img.height, target_pixels)
        if factor >= 2 and img.format == "JPEG":
            img.draft(img.mode, (math.ceil(img.width / factor), math.ceil(img.height / factor)))  # 1/2, 1/4 or 1/8
        img.load()
        image = img.copy()
    factor = _reduction(image.width, image.height, target_pixels)
    if factor >= 2 and image.mode in ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK"):
        image = image.reduce(factor)
    return image


def load_image(image, target_pixels: int | None = None):
    """A PIL image in RGB from a PIL image or a path (size checked from the header, see open_image)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, target_pixels=target_pixels)
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image or an image path, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _reduction(width: int, height: int, target_pixels: int | None) -> int:
    """The integer factor by which an image can shrink and stay at least twice `target_pixels`' size per side."""
    if not target_pixels or width * height <= 4 * target_pixels:
        return 1
    return max(1, int(math.sqrt(width * height / target_pixels) / 2))


def preprocess_image(
    image, config: ImageProcessorConfig | None = None, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> PreprocessedImage:
    """One PIL image → pixel_values (gh*gw, 1176) float32, grid_thw (1, gh, gw), n_tokens gh*gw/4."""
    cfg = config or ImageProcessorConfig()
    from PIL import Image

    image = to_rgb(image)
    factor = cfg.patch_size * cfg.merge_size
    h, w = smart_resize(image.height, image.width, factor, min_pixels or cfg.min_pixels, max_pixels or cfg.max_pixels)
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(image)  # (H, W, 3) uint8
    # transformers fuses rescale into normalise: (x - mean/rescale) / (std/rescale), float32.
    inv_rescale = np.float32(255.0)
    mean = np.asarray(cfg.image_mean, np.float32) * inv_rescale
    std = np.asarray(cfg.image_std, np.float32) * inv_rescale
    normed = (pixels.astype(np.float32) - mean) / std  # (H, W, 3)
    pv, gh, gw = _patchify(normed.transpose(2, 0, 1), cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    return PreprocessedImage(pv, np.array([1, gh, gw], dtype=np.int64), gh * gw // (cfg.merge_size**2))


def _patchify(image: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, int, int]:
    """(C, H, W) → (gh*gw, C*temporal*patch*patch), patches grouped by 2x2 merge blocks."""
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    x = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal, *x.shape[5:]))  # frame duplicated in time
    return np.ascontiguousarray(x.reshape(gh * gw, c * temporal * patch * patch), dtype=np.float32), gh, gw


def vision_rot_pos_ids(grid_thw, merge_size: int = MERGE_SIZE) -> np.ndarray:
    """Rotary (h, w) ids of every patch, in the merge-block order of pixel_values: (N, 2) int64."""
    t, h, w = (int(v) for v in grid_thw)
    hgrid, wgrid = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # (h, w) each
    shape = (h // merge_size, merge_size, w // merge_size, merge_size)
    hpos = hgrid.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)  # (h*w,)
    wpos = wgrid.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)).astype(np.int64)
