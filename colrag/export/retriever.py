"""Export a transformers ColQwen2 checkpoint (ColQwen2ForRetrieval) to a colrag bundle.

Bundle layout (kind "retriever"):
    vision.onnx (+ .data)    pixel_values (N,1176), rot_pos_ids (N,2) -> image_embeds (N/4,H)
    text.onnx (+ .data)      inputs_embeds (B,S,H), position_ids (3,B,S), attention_mask (B,S) -> embeddings (B,S,dim)
    embed_tokens.npy         (vocab, H) fp32 token-embedding table, memory-mapped at run time
    tokenizer.json ...       tokenizer and processor configs copied from the checkpoint
    manifest.json            format, model facts, prompts, sha256 of every file

The bundle is built in a temporary sibling folder and renamed into place only after
both graphs were checked against torch at an image size and sequence shape that
differ from the ones used for export, so a failed export never leaves a bundle.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from .. import __version__
from ..errors import ColragError
from ..vlm.constants import RETRIEVER_MAX_PIXELS, RETRIEVER_MIN_PIXELS
from . import steps
from .common import (
    export_graph,
    quiet_unless_verbose,
    read_source_identity,
    save_embedding_table,
    vision_hash,
)
from .quantize_step import quantize_graphs


def _text_inputs(batch: int, seq: int, hidden: int, seed: int):
    """Random embeddings, left padding on all rows but the first, text-like 3-D positions."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, seq, hidden, generator=gen)  # (B, S, H)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(1, batch):
        mask[b, : min(seq - 1, 2 * b)] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, S)
    pos = pos.unsqueeze(0).repeat(3, 1, 1)  # (3, B, S)
    pos[1] += torch.arange(seq) % 3  # make the three rope axes differ
    return embeds, pos, mask


@quiet_unless_verbose
def export_retriever(
    src: str | Path, out: str | Path, *, opset: int = 18, quantize: str = "none", force: bool = False
) -> dict:
    """Export checkpoint folder `src` to bundle folder `out`; returns the manifest.

    verbose=True lets the libraries' own logs, warnings and progress bars through
    (colrag.export.common.quiet_export); by default only colrag's progress lines show.

    quantize: "none" (fp32 graphs) or a scheme of colrag.export.quantize.QUANT_SCHEMES
    (weight-only, block-wise); the drift against fp32 is measured and recorded
    (colrag.export.quantize_step, the step colrag.export.quantize_bundle runs on an fp32 bundle).
    """
    src, out = steps.check_request(
        src, out, "retriever", "colqwen2", "ColQwen2 (e.g. vidore/colqwen2-v1.0-hf)", quantize, force
    )
    import onnxruntime as ort
    import torch
    from transformers import AutoProcessor, ColQwen2ForRetrieval

    started = time.perf_counter()
    with steps.work_folder(out) as work:
        steps.log(f"loading {src} ...")
        try:
            model = ColQwen2ForRetrieval.from_pretrained(src, dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:  # missing or unreadable weight files
            raise ColragError(f"cannot load the weights in {src}: {str(exc).splitlines()[0]}") from exc
        try:
            processor = AutoProcessor.from_pretrained(src)
        except Exception as exc:  # a checkpoint without processor files cannot be used
            raise ColragError(f"cannot load the processor of {src}: {exc}") from exc
        manifest_fields = _export_into(model, processor, src, work, opset, ort, torch)
        del model
        gc.collect()
        if quantize != "none":
            manifest_fields["quantization"] = quantize_graphs(work, work, "retriever", manifest_fields, quantize)
        return steps.finish_bundle(work, out, "retriever", manifest_fields, started, force=force)


def _export_into(model, processor, src: Path, work: Path, opset: int, ort, torch) -> dict:
    from .modules import RetrieverHead

    vlm = model.vlm
    text_cfg = vlm.config.text_config
    vis_cfg = vlm.config.vision_config
    hidden = text_cfg.hidden_size
    dim = model.embedding_proj_layer.out_features
    auto = torch.export.Dim.AUTO
    checks = {}

    # -- vision tower -------------------------------------------------------------
    steps.export_vision_tower(vlm.visual, work, opset)
    pv, rot = steps.vision_inputs(steps.CHECK_GRID, seed=1)
    with torch.no_grad():
        want = vlm.visual(pv, grid_thw=torch.tensor([steps.CHECK_GRID]), return_dict=True).pooler_output.numpy()
    sess = ort.InferenceSession(str(work / "vision.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"pixel_values": pv.numpy(), "rot_pos_ids": rot.numpy()})[0]
    checks["vision_max_abs_diff"] = steps.check_close("vision tower", got, want)
    del sess
    gc.collect()

    # -- language model + projection ---------------------------------------------------
    steps.log("exporting the language model ...")
    head = RetrieverHead(vlm.language_model, model.embedding_proj_layer).eval()
    args = _text_inputs(2, 12, hidden, seed=2)
    export_graph(
        head,
        args,
        work / "text.onnx",
        input_names=["inputs_embeds", "position_ids", "attention_mask"],
        output_names=["embeddings"],
        dynamic_shapes=({0: auto, 1: auto}, {1: auto, 2: auto}, {0: auto, 1: auto}),
        opset=opset,
    )
    args = _text_inputs(3, 29, hidden, seed=3)
    with torch.no_grad():
        want = head(*args).numpy()
    sess = ort.InferenceSession(str(work / "text.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(
        None, {"inputs_embeds": args[0].numpy(), "position_ids": args[1].numpy(), "attention_mask": args[2].numpy()}
    )[0]
    checks["text_max_abs_diff"] = steps.check_close("language model", got, want)
    del sess, head
    gc.collect()

    # -- tables, tokenizer, configs ----------------------------------------------------
    save_embedding_table(vlm.language_model.embed_tokens.weight, work / "embed_tokens.npy")
    min_pixels, max_pixels = steps.write_processor_files(
        src, work, processor.tokenizer, processor.image_processor, (RETRIEVER_MIN_PIXELS, RETRIEVER_MAX_PIXELS)
    )
    aug = processor.query_augmentation_token
    prompts = {
        "page": processor.visual_prompt_prefix,
        "query_prefix": processor.query_prefix,
        "query_suffix": aug * 10 + "\n",
    }
    return {
        "colrag_version": __version__,
        **read_source_identity(src),
        "model_type": "colqwen2",
        "architecture": "ColQwen2ForRetrieval",
        "dim": int(dim),
        "hidden_size": int(hidden),
        "vocab_size": int(text_cfg.vocab_size),
        "num_layers": int(text_cfg.num_hidden_layers),
        "image_token_id": int(vlm.config.image_token_id),
        "spatial_merge_size": int(vis_cfg.spatial_merge_size),
        "min_pixels": int(min_pixels),
        "max_pixels": int(max_pixels),
        "prompts": prompts,
        "vision_hash": vision_hash(vlm.visual),
        "opset": opset,
        "graphs": {"vision": "vision.onnx", "text": "text.onnx", "embed_tokens": "embed_tokens.npy"},
        "export_checks": checks,
    }
