"""Build full-size, randomly initialised checkpoints (speed does not depend on weight values).

    python bench/full_checkpoints.py [--cache ~/.cache/colrag-bench] [--which colqwen2|qwen2vl|both|qwen2vl-shared]

Shapes are those of Qwen/Qwen2-VL-2B-Instruct and vidore/colqwen2-v1.0-hf; weights are
saved in bf16 like the real checkpoints, with the real tokenizer from ../shared when
present. Built once and cached outside the repository.

`qwen2vl-shared` is a Qwen2-VL checkpoint whose vision tower holds the ColQwen2
checkpoint's weights (as the real pair does: ColQwen2's LoRA leaves the tower alone), so a
generator exported from it with --share-vision-with can answer from the index's page features.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CACHE = Path.home() / ".cache" / "colrag-bench"


def qwen2vl_2b_config():
    from transformers import Qwen2VLConfig

    text = dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
    )
    vision = dict(
        depth=32,
        embed_dim=1280,
        hidden_size=1536,
        num_heads=16,
        mlp_ratio=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        hidden_act="quick_gelu",
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )


def build_colqwen2(path: Path) -> Path:
    import torch
    from transformers import ColQwen2Config, ColQwen2ForRetrieval

    from tests.tiny_models import retriever_processor

    torch.manual_seed(0)
    model = ColQwen2ForRetrieval(ColQwen2Config(vlm_config=qwen2vl_2b_config(), embedding_dim=128)).eval()
    model.to(torch.bfloat16).save_pretrained(path)
    retriever_processor().save_pretrained(path)
    return path


def build_qwen2vl(path: Path, visual_from: Path | None = None) -> Path:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from tests.generator_fixtures import save_generator_processor

    torch.manual_seed(1)
    model = Qwen2VLForConditionalGeneration(qwen2vl_2b_config()).eval()
    if visual_from is not None:
        from transformers import ColQwen2ForRetrieval

        retriever = ColQwen2ForRetrieval.from_pretrained(visual_from, dtype=torch.bfloat16)
        model.model.visual.load_state_dict({k: v.float() for k, v in retriever.vlm.visual.state_dict().items()})
        del retriever
    model.to(torch.bfloat16).save_pretrained(path)
    save_generator_processor(path)  # tokenizer, image processor, chat template (a Qwen2VLProcessor needs torchvision)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--which", choices=["colqwen2", "qwen2vl", "both", "qwen2vl-shared"], default="both")
    args = ap.parse_args()
    todo = {
        "colqwen2": build_colqwen2,
        "qwen2vl": build_qwen2vl,
        "qwen2vl-shared": lambda path: build_qwen2vl(path, visual_from=args.cache / "colqwen2-2b-random"),
    }
    for name, build in todo.items():
        if args.which not in (name, "both") or (args.which == "both" and name == "qwen2vl-shared"):
            continue
        if name == "qwen2vl-shared" and not (args.cache / "colqwen2-2b-random" / "config.json").is_file():
            build_colqwen2(args.cache / "colqwen2-2b-random")
        path = args.cache / f"{name}-2b-random"
        if (path / "config.json").is_file():
            print(f"{path} exists")
            continue
        start = time.perf_counter()
        build(path)
        print(f"built {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
