"""Tiny, randomly initialised checkpoints that look exactly like downloaded ones.

They are built from a config, initialised with a large std (so outputs differ
meaningfully between inputs), and written with `save_pretrained` together with a
processor that uses the real Qwen2-VL tokenizer — the same folder layout as
`vidore/colqwen2-v1.0-hf` or `Qwen/Qwen2-VL-2B-Instruct` after download.
"""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_DIR = SHARED / "data" / "tokenizer" / "qwen2-vl-2b-instruct"
PDF_DIR = SHARED / "data" / "pdfs"
SMALL = str(64 * 28 * 28)  # --max-pixels of the tiny `ask` runs: keeps them quick

VOCAB = 151936  # the real vocabulary size, so the real tokenizer's ids are valid
INIT_STD = 0.2


def tiny_qwen2vl_config(**overrides):
    from transformers import Qwen2VLConfig

    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
    )
    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=64,
        num_heads=4,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **overrides)


def randomize_(model, seed: int) -> None:
    """Large-std init: weights N(0, 0.2), biases N(0, 0.2), norm scales 1 + N(0, 0.1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or "ln_q" in name:
                p.copy_(
                    1.0 + 0.1 * torch.randn(p.shape, generator=gen)
                    if name.endswith("weight")
                    else 0.1 * torch.randn(p.shape, generator=gen)
                )
            else:
                p.copy_(INIT_STD * torch.randn(p.shape, generator=gen))


def retriever_processor(max_pixels: int = 768 * 28 * 28, min_pixels: int = 4 * 28 * 28):
    from transformers import AutoTokenizer, ColQwen2Processor, Qwen2VLImageProcessor

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_colqwen2(path: Path, seed: int = 0) -> Path:
    """A ColQwen2ForRetrieval checkpoint folder (config, safetensors, processor, tokenizer)."""
    from transformers import ColQwen2Config, ColQwen2ForRetrieval

    config = ColQwen2Config(vlm_config=tiny_qwen2vl_config(), embedding_dim=128)
    model = ColQwen2ForRetrieval(config).eval()
    randomize_(model, seed)
    model.save_pretrained(path)
    retriever_processor().save_pretrained(path)
    return path
