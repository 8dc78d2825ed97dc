"""Steps both exporters take: the checks before loading, the work folder, the vision tower, the bundle."""

from __future__ import annotations

import contextlib
import gc
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ColragError
from ..vlm.bundle import write_manifest
from . import require_export_deps
from .common import (
    CONFIG_FILES,
    TOKENIZER_FILES,
    check_target,
    copy_checkpoint_files,
    export_graph,
    max_abs_diff,
    new_work_dir,
    replace_with,
)

# Grids used to trace the graphs and, different on purpose, to check them.
EXPORT_GRID = (1, 16, 12)
CHECK_GRID = (1, 10, 22)
TOLERANCE = 1e-4


def log(msg: str) -> None:
    """colrag's own progress line (stderr; stdout is for results)."""
    print(msg, file=sys.stderr, flush=True)


def check_close(name: str, got, want) -> float:
    """The graph's max abs difference from torch's output; an error past TOLERANCE (relative to large outputs)."""
    diff = max_abs_diff(got, want)
    scale = max(1.0, float(np.abs(np.asarray(want)).max()))
    if not diff <= TOLERANCE * scale:
        raise ColragError(
            f"export check failed: {name} differs from torch by {diff:.3g} (tolerance {TOLERANCE * scale:.3g})"
        )
    return diff


def vision_inputs(grid_thw: tuple[int, int, int], seed: int):
    """Random pixel patches (N, 1176) and their rotary position ids (N, 2) for one image grid."""
    import torch
    from transformers.vision_utils import get_vision_position_ids

    n = grid_thw[0] * grid_thw[1] * grid_thw[2]
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(n, 1176, generator=gen)  # (N, 1176)
    rot_pos_ids = get_vision_position_ids(torch.tensor([grid_thw]), 2)  # (N, 2)
    return pixel_values, rot_pos_ids


def export_vision_tower(visual, work: Path, opset: int) -> None:
    """vision.onnx in `work`: transformers' vision tower traced at EXPORT_GRID, patch count dynamic."""
    import torch

    from .modules import VisionTower

    log("exporting the vision tower ...")
    tower = VisionTower(visual).eval()
    auto = torch.export.Dim.AUTO
    export_graph(
        tower,
        vision_inputs(EXPORT_GRID, seed=0),
        work / "vision.onnx",
        input_names=["pixel_values", "rot_pos_ids"],
        output_names=["image_embeds"],
        dynamic_shapes=({0: auto}, {0: auto}),
        opset=opset,
    )
    del tower
    gc.collect()


def check_request(
    src: str | Path, out: str | Path, kind: str, model_type: str, example: str, quantize: str, force: bool
) -> tuple[Path, Path]:
    """What is refused before a checkpoint loads: an unknown scheme, missing export packages,
    a folder that is no checkpoint of `model_type`, a target that is not ours to replace."""
    from .quantize import QUANT_SCHEMES

    if quantize != "none" and quantize not in QUANT_SCHEMES:
        raise ColragError(f"unknown quantization {quantize!r}: choose none, {', '.join(QUANT_SCHEMES)}")
    require_export_deps()
    from transformers import AutoConfig

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not (src / "config.json").is_file():
        raise ColragError(f"{src} is not a checkpoint folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise ColragError(f"cannot read the checkpoint config in {src}: {str(exc).splitlines()[0]}") from exc
    if config.model_type != model_type:
        raise ColragError(f"{src} holds a {config.model_type!r} checkpoint; the {kind} export needs {example}")
    check_target(out, kind, force=force)  # refused before anything is loaded or written
    return src, out


@contextlib.contextmanager
def work_folder(out: Path) -> Iterator[Path]:
    """A fresh work folder beside `out`; removed when the export fails or is interrupted."""
    work = new_work_dir(out)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def finish_bundle(work: Path, out: Path, kind: str, fields: dict, started: float, *, force: bool) -> dict:
    """Write the manifest and put the finished bundle in place of `out`; returns the manifest."""
    fields["export_seconds"] = round(time.perf_counter() - started, 1)
    manifest = write_manifest(work, kind, fields)
    replace_with(work, out, kind, force=force)
    log(f"{kind} bundle written to {out} in {fields['export_seconds']} s")
    return manifest


def write_processor_files(
    src: Path, work: Path, tokenizer, image_processor, default_pixels: tuple[int, int]
) -> tuple[int, int]:
    """The checkpoint's tokenizer and config files in `work` (written from the loaded processor where
    the checkpoint lacks them); returns the image processor's (min_pixels, max_pixels)."""
    copied = copy_checkpoint_files(src, work, TOKENIZER_FILES + CONFIG_FILES)
    if "tokenizer.json" not in copied:
        tokenizer.save_pretrained(work)  # a fast tokenizer can always write tokenizer.json
        (work / "chat_template.jinja").unlink(missing_ok=True)
    if not (work / "tokenizer.json").is_file():
        raise ColragError(f"{src} has no tokenizer.json and none could be built")
    if not (work / "preprocessor_config.json").is_file():
        image_processor.save_pretrained(work)
    min_pixels = getattr(image_processor, "min_pixels", None) or default_pixels[0]
    max_pixels = getattr(image_processor, "max_pixels", None) or default_pixels[1]
    return int(min_pixels), int(max_pixels)
