"""Tiny random Qwen2-VL generator checkpoints and their exported bundles, built once per session.

The checkpoint folder looks like a download of Qwen/Qwen2-VL-2B-Instruct: config and
safetensors from `save_pretrained`, a Qwen2VLProcessor with the real tokenizer and
chat template, and the real generation_config.json. Weights are N(0, 0.2) with untied
embeddings so that greedy tokens vary from step to step.

tests/conftest.py registers this module as a plugin (`pytest_plugins`), so a test names
a fixture and gets it, built once per session; `_once` memoises each build as well.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tiny_models import TOKENIZER_DIR, randomize_, tiny_qwen2vl_config

_BUILT: dict[str, Path] = {}


def _once(key: str, build) -> Path:
    if key not in _BUILT or not _BUILT[key].exists():
        _BUILT[key] = build()
    return _BUILT[key]


def require_tokenizer() -> None:
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"{TOKENIZER_DIR} is absent: the real tokenizer lives in ../shared")


def save_generator_processor(path: Path) -> None:
    """Tokenizer, image processor and chat template, as in a downloaded Qwen2-VL-Instruct folder.

    (A Qwen2VLProcessor object needs a video processor, i.e. torchvision, to be built
    in transformers 5; the files it would write are written one by one instead.)
    """
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    from colrag.vlm.constants import GENERATOR_MAX_PIXELS, GENERATOR_MIN_PIXELS

    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=GENERATOR_MIN_PIXELS, max_pixels=GENERATOR_MAX_PIXELS).save_pretrained(path)
    shutil.copyfile(TOKENIZER_DIR / "chat_template.json", path / "chat_template.json")
    shutil.copyfile(TOKENIZER_DIR / "generation_config.json", path / "generation_config.json")


def build_tiny_qwen2vl(path: Path, seed: int = 1, visual_state: dict | None = None) -> Path:
    """A Qwen2VLForConditionalGeneration checkpoint folder; `visual_state` replaces the vision tower's weights."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config()).eval()
    randomize_(model, seed)
    if visual_state is not None:
        model.model.visual.load_state_dict(visual_state)
    model.save_pretrained(path)
    save_generator_processor(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2vl_checkpoint(tmp_path_factory):
    require_tokenizer()
    pytest.importorskip("transformers")
    return _once("checkpoint", lambda: build_tiny_qwen2vl(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2vl"))


@pytest.fixture(scope="session")
def tiny_generator_bundle(tiny_qwen2vl_checkpoint, tmp_path_factory):
    """The tiny generator checkpoint exported by colrag's own exporter."""
    from colrag.export.generator import export_generator

    def build():
        out = tmp_path_factory.mktemp("gen-bundles") / "generator"
        export_generator(tiny_qwen2vl_checkpoint, out)
        return out

    return _once("bundle", build)


@pytest.fixture(scope="session")
def tiny_qwen2vl_shared_checkpoint(tiny_colqwen2_checkpoint, tmp_path_factory):
    """A generator checkpoint whose vision tower has exactly the tiny retriever's weights."""

    def build():
        import torch
        from transformers import ColQwen2ForRetrieval

        retriever = ColQwen2ForRetrieval.from_pretrained(tiny_colqwen2_checkpoint, dtype=torch.float32)
        state = {k: v.clone() for k, v in retriever.vlm.visual.state_dict().items()}
        del retriever
        return build_tiny_qwen2vl(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2vl-shared", seed=2, visual_state=state)

    return _once("shared-checkpoint", build)


@pytest.fixture(scope="session")
def tiny_shared_generator_bundle(tiny_qwen2vl_shared_checkpoint, tiny_retriever_bundle, tmp_path_factory):
    """Exported with --share-vision-with the tiny retriever bundle."""
    from colrag.export.generator import export_generator

    def build():
        out = tmp_path_factory.mktemp("gen-bundles") / "generator-shared"
        export_generator(tiny_qwen2vl_shared_checkpoint, out, share_vision_with=tiny_retriever_bundle)
        return out

    return _once("shared-bundle", build)
