"""Export a transformers Qwen2-VL checkpoint (Qwen2VLForConditionalGeneration) to a colrag bundle.

Bundle layout (kind "generator"):
    vision.onnx (+ .data)    pixel_values (N,1176), rot_pos_ids (N,2) -> image_embeds (N/4,H)
                             (absent when shared: the manifest then points at the retriever's graph)
    decoder.onnx (+ .data)   inputs_embeds (B,S,H), position_ids (3,B,S), attention_mask (B,P+S),
                             past_key_i / past_value_i (B,kv_heads,P,head_dim) for each layer i
                             -> logits (B,1,vocab) for the LAST position only,
                                present_key_i / present_value_i (B,kv_heads,P+S,head_dim)
                             One graph serves prefill (P = 0) and decode (S = 1).
    embed_tokens.npy         (vocab, H) fp32 token-embedding table, memory-mapped at run time
    tokenizer.json ...       tokenizer, processor and generation configs copied from the checkpoint
    manifest.json            format, model facts, sha256 of every file

lm_head is always its own weight inside the decoder graph, even when the checkpoint
ties it to the embeddings, so a quantizer can treat it like every other MatMul.

Memory: the checkpoint is loaded once in fp32; the vision tower is exported and then
dropped before the decoder is exported, and weights go to external data files.

Every graph is checked against transformers before the manifest is written: the
vision tower at the export grid and at another grid; the decoder's prefill (empty
past) against the language model's logits, and one decode step on the prefill's
cache against the logits of a full forward over the longer sequence.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ColragError
from ..vlm.bundle import load_manifest
from ..vlm.constants import EOS_IDS, GENERATOR_MAX_PIXELS, GENERATOR_MIN_PIXELS
from . import steps
from .common import (
    export_graph,
    quiet_unless_verbose,
    read_source_identity,
    save_embedding_table,
    vision_hash,
)
from .quantize_step import quantize_graphs, run_steps


def past_names(num_layers: int) -> list[str]:
    return [f"past_{kv}_{i}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present_{kv}_{i}" for i in range(num_layers) for kv in ("key", "value")]


_DECODER_CLASS = None


def _decoder_class():
    """The decoder wrapper class, defined once and without closures: torch.export keeps
    references to the classes it traces, and a closure over the model would keep the
    whole model alive for the rest of the export (several GB at full size)."""
    global _DECODER_CLASS
    if _DECODER_CLASS is None:
        from torch import nn

        from .modules import TextModel

        class Decoder(nn.Module):
            def __init__(self, language_model, lm_head):
                super().__init__()
                self.text = TextModel(language_model, with_cache=True)
                self.lm_head = lm_head

            def forward(self, inputs_embeds, position_ids, attention_mask, *past):
                hidden, *present = self.text(inputs_embeds, position_ids, attention_mask, *past)  # (B, S, H)
                logits = self.lm_head(hidden[:, -1:, :])  # (B, 1, vocab)
                return (logits, *present)

        _DECODER_CLASS = Decoder
    return _DECODER_CLASS


def _decoder_module(language_model, lm_head):
    """TextModel with a KV cache, plus lm_head on the last position.

    The caller has removed the embedding table from `language_model` (it is saved as
    embed_tokens.npy), so even a tied lm_head weight enters the graph once, as lm_head.
    """
    return _decoder_class()(language_model, lm_head).eval()


def _text_positions(mask):
    """Text-like 3-D positions (3, B, T) from a left-padded mask (B, T), the three axes made to differ."""
    import torch

    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    pos = pos.unsqueeze(0).repeat(3, 1, 1).clone()  # (3, B, T)
    pos[1] += torch.arange(pos.shape[-1]) % 3  # as for image tokens, whose h/w positions differ
    pos[2] += (torch.arange(pos.shape[-1]) % 2) * 2
    return pos


@quiet_unless_verbose
def export_generator(
    src: str | Path,
    out: str | Path,
    *,
    share_vision_with: str | Path | None = None,
    opset: int = 18,
    quantize: str = "none",
    force: bool = False,
) -> dict:
    """Export checkpoint folder `src` to bundle folder `out`; returns the manifest.

    verbose=True lets the libraries' own logs, warnings and progress bars through
    (colrag.export.common.quiet_export); by default only colrag's progress lines show.

    quantize: "none" (fp32) or a scheme of colrag.export.quantize.QUANT_SCHEMES
    (weight-only, block-wise; activations stay fp32). The drift against fp32 on fixed
    check inputs (logit cosine, greedy top-1 agreement) is recorded in the manifest
    (colrag.export.quantize_step, the step colrag.export.quantize_bundle runs on an fp32 bundle).

    share_vision_with: a retriever bundle folder; when its manifest's vision_hash equals
    this checkpoint's, its vision graph is referenced instead of exporting a copy.
    """
    src, out = steps.check_request(
        src, out, "generator", "qwen2_vl", "Qwen2-VL (e.g. Qwen/Qwen2-VL-2B-Instruct)", quantize, force
    )
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

    shared = None
    if share_vision_with is not None:
        shared = Path(share_vision_with).expanduser()
        shared_manifest = load_manifest(shared, "retriever")
        if not shared_manifest.get("vision_hash"):
            raise ColragError(
                f"{shared}: the retriever bundle records no vision_hash; re-export it to share its vision tower"
            )

    started = time.perf_counter()
    with steps.work_folder(out) as work:
        steps.log(f"loading {src} ...")
        model = Qwen2VLForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
        try:  # tokenizer and image processor only: a full Qwen2VLProcessor would need torchvision
            tokenizer = AutoTokenizer.from_pretrained(src)
            image_processor = AutoImageProcessor.from_pretrained(src)
        except Exception as exc:  # a checkpoint without processor files cannot be used
            raise ColragError(f"cannot load the tokenizer / image processor of {src}: {exc}") from exc
        fields, checks = _export_into(model, tokenizer, image_processor, src, out, work, shared, opset)
        del model  # free torch before onnxruntime loads the graphs: the two never share memory
        gc.collect()
        steps.log("checking the graphs against transformers ...")
        fields["export_checks"] = {f"{check.label}_max_abs_diff": check.run(work) for check in checks}
        if quantize != "none":
            fields["quantization"] = quantize_graphs(work, work, "generator", fields, quantize)
        return steps.finish_bundle(work, out, "generator", fields, started, force=force)


class _Check:
    """A graph check: ORT feeds and the torch outputs they must reproduce (computed before torch is freed)."""

    def __init__(self, label: str, graph: str, steps: list[tuple[dict, np.ndarray]], cache_shape: tuple | None = None):
        self.label, self.graph, self.steps, self.cache_shape = label, graph, steps, cache_shape

    def run(self, work: Path) -> float:
        """Max abs difference to torch over the steps; raises when over the tolerance."""
        outs, cache_shape = run_steps(work / self.graph, [feeds for feeds, _ in self.steps])
        worst = max(
            steps.check_close(f"{self.label} (step {i + 1})", got, want)
            for i, (got, (_, want)) in enumerate(zip(outs, self.steps, strict=True))
        )
        if self.cache_shape is not None and cache_shape != self.cache_shape:
            raise ColragError(
                f"export check failed: {self.label} cache has shape {cache_shape}, expected {self.cache_shape}"
            )
        return worst


def _export_vision(visual, work: Path, opset: int) -> list[_Check]:
    import torch

    steps.export_vision_tower(visual, work, opset)
    checks = []
    for label, grid, seed in (("vision_export_grid", steps.EXPORT_GRID, 0), ("vision_check_grid", steps.CHECK_GRID, 1)):
        pv, rot = steps.vision_inputs(grid, seed=seed)
        with torch.no_grad():  # transformers' own vision forward is the reference
            want = visual(pv, grid_thw=torch.tensor([grid]), return_dict=True).pooler_output.numpy()  # (N/4, H)
        checks.append(_Check(label, "vision.onnx", [({"pixel_values": pv.numpy(), "rot_pos_ids": rot.numpy()}, want)]))
    return checks


def _export_decoder(model, work: Path, opset: int) -> list[_Check]:
    import torch

    text_cfg = model.config.text_config
    lm = model.model.language_model
    n_layers = text_cfg.num_hidden_layers
    kv_heads = text_cfg.num_key_value_heads
    head_dim = text_cfg.hidden_size // text_cfg.num_attention_heads
    hidden = text_cfg.hidden_size
    auto = torch.export.Dim.AUTO

    steps.log("exporting the decoder ...")
    decoder = _decoder_module(lm, model.lm_head)
    # trace with B=2, S=5, P=3 (sizes 0 and 1 would be specialised by torch.export)
    gen = torch.Generator().manual_seed(4)
    b, s, p = 2, 5, 3
    embeds = torch.randn(b, s, hidden, generator=gen)
    mask = torch.ones(b, p + s, dtype=torch.int64)
    mask[1, :2] = 0
    pos = _text_positions(mask)[:, :, p:]
    past = tuple(torch.randn(b, kv_heads, p, head_dim, generator=gen) for _ in range(2 * n_layers))
    export_graph(
        decoder,
        (embeds, pos, mask, *past),
        work / "decoder.onnx",
        input_names=["inputs_embeds", "position_ids", "attention_mask", *past_names(n_layers)],
        output_names=["logits", *present_names(n_layers)],
        dynamic_shapes=(
            {0: auto, 1: auto},
            {1: auto, 2: auto},
            {0: auto, 1: auto},
            tuple({0: auto, 2: auto} for _ in past),
        ),
        opset=opset,
    )
    del decoder, past, embeds
    gc.collect()
    return [_decoder_check(model, n_layers, kv_heads, head_dim)]


def _decoder_check(model, n_layers: int, kv_heads: int, head_dim: int) -> _Check:
    """Prefill (empty past), then one decode step on its cache, against transformers' full forward."""
    import torch

    lm = model.model.language_model
    hidden = lm.config.hidden_size
    gen = torch.Generator().manual_seed(5)
    b, s = 2, 11
    embeds = torch.randn(b, s + 1, hidden, generator=gen)  # the last position is the decode step
    mask = torch.ones(b, s + 1, dtype=torch.int64)
    mask[1, :3] = 0  # left padding on the second row
    pos = _text_positions(mask)  # (3, B, S+1)

    def reference(n: int) -> np.ndarray:
        with torch.no_grad():
            out = lm(
                inputs_embeds=embeds[:, :n], position_ids=pos[:, :, :n], attention_mask=mask[:, :n], use_cache=False
            )
            return model.lm_head(out.last_hidden_state[:, -1:, :]).numpy()  # (B, 1, vocab)

    empty = np.zeros((b, kv_heads, 0, head_dim), dtype=np.float32)
    prefill = {
        "inputs_embeds": embeds[:, :s].numpy(),
        "position_ids": pos[:, :, :s].numpy(),
        "attention_mask": mask[:, :s].numpy(),
    }
    prefill.update({name: empty for name in past_names(n_layers)})
    decode = {
        "inputs_embeds": embeds[:, s:].numpy(),
        "position_ids": pos[:, :, s:].numpy(),
        "attention_mask": mask.numpy(),
    }
    decode.update({name: f"present:{i}" for i, name in enumerate(past_names(n_layers))})
    return _Check(
        "decoder_prefill_decode",
        "decoder.onnx",
        [(prefill, reference(s)), (decode, reference(s + 1))],
        cache_shape=(b, kv_heads, s + 1, head_dim),
    )


def _shared_vision(shared: Path, out: Path, vhash: str) -> dict | None:
    """The manifest entry referencing a retriever's vision graph, or None when the weights differ."""
    manifest = load_manifest(shared, "retriever")
    if manifest.get("vision_hash") != vhash:
        steps.log(f"note: the vision tower of {shared} differs from this checkpoint's; exporting a separate copy")
        return None
    name = manifest.get("graphs", {}).get("vision", "vision.onnx")
    graph = shared.resolve() / name
    if name not in manifest["files"] or not graph.is_file():
        raise ColragError(f"{shared}: the retriever bundle has no vision graph to share")
    return {
        "bundle": Path(os.path.relpath(shared.resolve(), out.parent.resolve() / out.name)).as_posix(),
        "graph": name,
        "sha256": manifest["files"][name]["sha256"],
        "vision_hash": vhash,
    }


def _export_into(model, tokenizer, image_processor, src: Path, out: Path, work: Path, shared: Path | None, opset: int):
    """Write the graphs and files into `work`; returns the manifest fields and the checks still to run."""
    config = model.config
    text_cfg = config.text_config
    vis_cfg = config.vision_config

    vhash = vision_hash(model.model.visual)
    shared_entry = _shared_vision(shared, out, vhash) if shared is not None else None
    graphs = {"decoder": "decoder.onnx", "embed_tokens": "embed_tokens.npy"}
    checks: list[_Check] = []
    if shared_entry is None:
        checks += _export_vision(model.model.visual, work, opset)
        graphs["vision"] = "vision.onnx"
    else:
        steps.log(f"sharing the vision tower of {shared}")
    # free each part once it is exported: vision first, then the embedding table (saved to .npy)
    model.model.visual = None
    lm = model.model.language_model
    save_embedding_table(lm.embed_tokens.weight, work / "embed_tokens.npy")
    lm.embed_tokens = None
    gc.collect()
    checks += _export_decoder(model, work, opset)

    min_pixels, max_pixels = steps.write_processor_files(
        src, work, tokenizer, image_processor, (GENERATOR_MIN_PIXELS, GENERATOR_MAX_PIXELS)
    )

    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = list(EOS_IDS)
    eos = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    fields = {
        "colrag_version": __version__,
        **read_source_identity(src),
        "model_type": "qwen2_vl",
        "architecture": "Qwen2VLForConditionalGeneration",
        "hidden_size": int(text_cfg.hidden_size),
        "num_layers": int(text_cfg.num_hidden_layers),
        "num_attention_heads": int(text_cfg.num_attention_heads),
        "num_kv_heads": int(text_cfg.num_key_value_heads),
        "head_dim": int(text_cfg.hidden_size // text_cfg.num_attention_heads),
        "vocab_size": int(text_cfg.vocab_size),
        "tie_word_embeddings": bool(
            getattr(config, "tie_word_embeddings", False) or getattr(text_cfg, "tie_word_embeddings", False)
        ),
        "eos_token_ids": eos,
        "image_token_id": int(config.image_token_id),
        "spatial_merge_size": int(vis_cfg.spatial_merge_size),
        "min_pixels": int(min_pixels),
        "max_pixels": int(max_pixels),
        "logits": "last",  # the decoder returns logits (B, 1, vocab) for the last position only
        "vision_hash": vhash,
        "opset": opset,
        "graphs": graphs,
    }
    if shared_entry is not None:
        fields["shared_vision"] = shared_entry
    return fields, checks
