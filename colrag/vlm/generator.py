"""Qwen2-VL answers on onnxruntime + numpy.

    g = Generator.load("models/generator")
    out = g.generate("What does the chart show?", images=[page_image], max_new_tokens=256)
    out.text, out.token_ids, out.vision_s, out.prefill_s, out.decode_s, out.n_prompt_tokens
    for piece in g.stream("Describe this image.", images=["chart.png"]):
        print(piece, end="", flush=True)
    g.generate("And the title?", images=[features])   # ImageFeatures (e.g. from the index): no vision pass

The prompt is the Qwen2-VL-Instruct chat prompt (system prompt, one
<|vision_start|><|image_pad|><|vision_end|> per image before the question, no BOS).
Positions are the 3-D M-RoPE index (colrag.vlm.rope.get_rope_index); after the prompt each
new token sits at past length + rope delta on all three axes. One decoder graph
serves prefill (empty past) and decode; it returns logits for the last position.
An image may be given as its precomputed vision-tower output (colrag.vlm.image_features:
merged embeddings + grid, e.g. stored by the index): the prompt and positions are the
ones the same image's pixels would give, only the vision tower does not run. The vision
graph's session is created on the first image that needs it; which graph that is (the bundle's
own, or the retriever bundle's it shares) is colrag.vlm.shared_vision's job.
Greedy by default; temperature / top-p / top-k / repetition penalty follow
transformers' semantics (colrag.vlm.sampling).

The k/v of the prompt up to the last image are kept in a bounded prefix cache
(colrag.vlm.prefix_cache): a second question about the same image(s) runs neither the
vision tower nor the page's prefill, only the question's few tokens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from ..errors import InputError
from .backends import LazyVision, as_numpy, open_session, runs_on
from .bundle import RuntimeOptions, bundle_file, bundle_id, open_bundle
from .constants import EOS_IDS, IMAGE_PAD_ID, MAX_PROMPT_TOKENS, SYSTEM_PROMPT
from .generation import Generation, GenerationConfig, PrefillInputs
from .image_features import ImageFeatures, image_list
from .prefix_cache import Prefix, PrefixCache, image_cache_input, prefix_key
from .sampling import Sampler
from .shared_vision import vision_graph_path, vision_graph_sha256, vision_session_key


class Generator:
    def __init__(
        self,
        bundle_dir: Path,
        manifest: dict,
        vision,
        decoder,
        embed_table: np.ndarray,
        tokenizer,
        image_config,
        prefix_cache: PrefixCache | None = None,
        prefill=None,
        *,
        vision_factory: Callable[[], Any] | None = None,
        vision_runtime: str = "onnxruntime f32",
    ):
        self.bundle_dir = bundle_dir
        self.prefix_cache = prefix_cache
        self.manifest = manifest
        self._vision_session = vision  # or None: created by vision_factory on the first image that needs it
        self._vision_factory = vision_factory
        self._vision_runtime = vision_runtime  # "backend precision" the vision graph runs on once loaded
        self._decoder = decoder  # decode steps
        self._prefill = (
            prefill if prefill is not None else decoder
        )  # the prompt (the same session unless chosen otherwise)
        self._embed_table = embed_table  # (vocab, hidden), memory-mapped
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.bundle_id = bundle_id(manifest)
        self.name = str(manifest.get("source", bundle_dir.name))
        self.vision_hash = manifest.get("vision_hash")
        self.num_layers = int(manifest["num_layers"])
        self.num_kv_heads = int(manifest["num_kv_heads"])
        self.head_dim = int(manifest["head_dim"])
        self.hidden_size = int(manifest["hidden_size"])
        self.min_pixels = int(manifest["min_pixels"])
        self.max_pixels = int(manifest["max_pixels"])
        self.eos_ids = tuple(int(e) for e in manifest.get("eos_token_ids") or EOS_IDS)
        self.image_token_id = int(manifest.get("image_token_id", IMAGE_PAD_ID))
        self.spatial_merge_size = int(manifest.get("spatial_merge_size", 2))
        self.max_prompt_tokens = MAX_PROMPT_TOKENS  # see constants.py for why this limit
        self._past_names = [f"past_{kv}_{i}" for i in range(self.num_layers) for kv in ("key", "value")]
        self._output_names = ["logits"] + [
            f"present_{kv}_{i}" for i in range(self.num_layers) for kv in ("key", "value")
        ]

    @property
    def runtimes(self) -> dict[str, str]:
        """What each graph runs on: {'vision': 'openvino bf16', 'decoder': 'onnxruntime f32'}."""
        out = {"vision": self._vision_runtime}  # without loading the vision graph (stored features never need it)
        if self._vision_session is not None:
            out["vision"] = f"{self._vision_session.backend} {self._vision_session.precision}"
        sessions = (("prefill", self._prefill), ("decode", self._decoder))
        return out | {name: f"{s.backend} {s.precision}" for name, s in sessions}

    # -- loading -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike,
        *,
        prefix_cache: PrefixCache | bool | None = True,
        **runtime: Unpack[RuntimeOptions],
    ) -> Generator:
        """prefix_cache: True (default) keeps recent pages' prompt k/v in memory, so a second
        question on the same image skips the vision tower and most of the prefill; pass a
        PrefixCache (e.g. with a folder, to keep them across processes) or False for none.
        runtime: threads, device, backend (auto | onnxruntime | openvino), precision (auto | f32 |
        bf16); None: COLRAG_BACKEND / COLRAG_PRECISION, else auto (colrag.vlm.backends)."""
        b = open_bundle(bundle_dir, "generator")
        bundle_dir, manifest, graphs = b.dir, b.manifest, b.manifest["graphs"]
        backend, precision = runtime.get("backend"), runtime.get("precision")
        opts: dict[str, Any] = dict(runtime)
        vision_path = cls.vision_graph(bundle_dir, manifest)  # checked now, loaded when an image needs it
        vision_key = vision_session_key(manifest)
        decoder_path = bundle_file(bundle_dir, manifest, graphs["decoder"])
        decoder = open_session(decoder_path, graph="decode", cache_key=bundle_id(manifest), **opts)
        prefill = decoder  # one session serves both, unless the prefill is chosen to run elsewhere
        if runs_on("prefill", backend, precision) != runs_on("decode", backend, precision):
            prefill = open_session(decoder_path, graph="prefill", cache_key=bundle_id(manifest), **opts)
        if prefix_cache is True:
            prefix_cache = PrefixCache()
        return cls(
            bundle_dir,
            manifest,
            None,
            decoder,
            b.table,
            b.tokenizer,
            b.image_config,
            prefix_cache or None,
            prefill=prefill,
            vision_factory=lambda: open_session(vision_path, graph="vision", cache_key=vision_key, **opts),
            vision_runtime=" ".join(runs_on("vision", backend, precision)),
        )

    _vision = LazyVision()  # answers from stored page features never open it

    @staticmethod
    def vision_graph(bundle_dir: Path, manifest: dict) -> Path:
        """This bundle's vision graph, or the retriever bundle's one it shares (colrag.vlm.shared_vision)."""
        return vision_graph_path(bundle_dir, manifest)

    # -- inputs ----------------------------------------------------------------------
    def image_features(self, image, *, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vision tower output for one image: (image_embeds (n_tokens, hidden), grid_thw (3,))."""
        pre = self._preprocess(image, max_pixels)
        return self._vision_embeds(pre), np.asarray(pre.grid_thw, dtype=np.int64)

    def _preprocess(self, image, max_pixels: int | None):
        from .preprocess import load_image, preprocess_image

        cap = self._pixel_cap(max_pixels)
        return preprocess_image(load_image(image, cap), self.image_config, min_pixels=self.min_pixels, max_pixels=cap)

    def _pixel_cap(self, max_pixels: int | None) -> int:
        cap = self.max_pixels if max_pixels is None else min(int(max_pixels), self.max_pixels)
        return max(cap, self.min_pixels)

    def _vision_embeds(self, pre) -> np.ndarray:
        from .preprocess import vision_rot_pos_ids

        rot = vision_rot_pos_ids(pre.grid_thw, self.spatial_merge_size)  # (N, 2)
        (embeds,) = self._vision.run({"pixel_values": pre.pixel_values, "rot_pos_ids": rot})  # (N/4, hidden)
        return as_numpy(embeds)

    def prompt_ids(self, prompt: str, image_token_counts: Sequence[int] = (), system: str = SYSTEM_PROMPT) -> list[int]:
        from .tokenization import chat_prompt_ids

        return list(chat_prompt_ids(self.tokenizer, prompt, list(image_token_counts), system=system))

    # -- generation ------------------------------------------------------------------
    def generate(
        self, prompt: str, images: Sequence = (), config: GenerationConfig | None = None, **options
    ) -> Generation:
        """Answer `prompt` about `images` (PIL images or paths; none for text only).

        config and/or options: GenerationConfig's fields (max_new_tokens=..., temperature=..., ...)."""
        result = Generation()
        for _ in self._tokens(prompt, images, result, GenerationConfig.of(config, options)):
            pass
        result.text = self._decode_text(result.token_ids)
        return result

    def stream(
        self,
        prompt: str,
        images: Sequence = (),
        config: GenerationConfig | None = None,
        *,
        result: Generation | None = None,
        **options,
    ) -> Iterator[str]:
        """Yield the answer's text as it is produced, in pieces that are whole UTF-8 characters.

        Options as for `generate`. Pass a `Generation` as `result` to get the ids and timings once
        the stream ends.
        """
        from .tokenization import IncrementalDecoder

        result = result if result is not None else Generation()
        decoder = IncrementalDecoder(self.tokenizer)
        pieces: list[str] = []
        for token in self._tokens(prompt, images, result, GenerationConfig.of(config, options)):
            if token in self.eos_ids:
                continue
            piece = decoder.add(token)
            if piece:
                pieces.append(piece)
                yield piece
        tail = decoder.flush()
        if tail:
            pieces.append(tail)
            yield tail
        result.text = "".join(pieces)

    def _decode_text(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode([t for t in token_ids if t not in self.eos_ids])

    def _prefill_inputs(
        self, prompt: str, images: Sequence, result: Generation, max_pixels: int | None, system: str
    ) -> PrefillInputs:
        """Everything the prefill needs (a prefix cache hit leaves only the tokens after the images)."""
        from .rope import get_rope_index

        if not isinstance(prompt, str):
            raise InputError(f"a prompt must be text, got {type(prompt).__name__}")
        start = time.perf_counter()
        # an image is either precomputed features (checked against this model) or pixels to preprocess
        pres = [img if isinstance(img, ImageFeatures) else self._preprocess(img, max_pixels) for img in images]
        for p in pres:
            if isinstance(p, ImageFeatures):
                p.check(self.hidden_size, self.spatial_merge_size, self.vision_hash)
        grids = np.stack([np.asarray(p.grid_thw, dtype=np.int64) for p in pres]) if pres else None  # (n_images, 3)
        counts = [int(np.prod(g)) // self.spatial_merge_size**2 for g in grids] if grids is not None else []
        ids = np.asarray([self.prompt_ids(prompt, counts, system=system)], dtype=np.int64)  # (1, S)
        if ids.shape[1] > self.max_prompt_tokens:
            raise InputError(
                f"the prompt is {ids.shape[1]:,} tokens long ({ids.shape[1] - sum(counts):,} of "
                f"text, {sum(counts):,} for "
                f"{len(counts)} image(s)); the limit is {self.max_prompt_tokens:,} tokens: shorten the question, "
                "or give fewer pages / a lower --max-pixels"
            )
        slots = ids[0] == self.image_token_id  # (S,)
        if int(slots.sum()) != sum(counts):
            raise RuntimeError(f"{int(slots.sum())} image slots for {sum(counts)} image tokens")

        # The prefix: everything up to the last image; its k/v do not depend on the question.
        n_prefix = int(np.flatnonzero(slots)[-1]) + 2 if pres else 0  # the last <|image_pad|>, then <|vision_end|>
        key = None
        past = None
        if self.prefix_cache is not None and pres:
            key = self._prefix_key(ids[0, :n_prefix], pres, max_pixels, system)
            shape = (len(self._past_names), self.num_kv_heads, self.head_dim)
            cached = self.prefix_cache.get(key, ids[0, :n_prefix], shape)
            if cached is not None:
                past = cached.past
        first = n_prefix if past is not None else 0
        embeds = np.asarray(self._embed_table[ids[0, first:]], dtype=np.float32)[None]  # (1, S - first, H)
        if pres and past is None:
            embeds[0, slots] = np.concatenate(
                [p.embeds if isinstance(p, ImageFeatures) else self._vision_embeds(p) for p in pres]
            )  # (n_image_tokens, H)
            result.vision_s = time.perf_counter() - start
        position_ids, rope_deltas = get_rope_index(
            ids,
            grids,
            np.ones_like(ids),
            spatial_merge_size=self.spatial_merge_size,
            image_token_id=self.image_token_id,
        )  # (3, 1, S), (1, 1)
        result.n_prompt_tokens = int(ids.shape[1])
        result.n_image_tokens = int(slots.sum())
        result.prefix_cached = past is not None
        positions = np.asarray(position_ids, dtype=np.int64)[:, :, first:]  # (3, 1, S - first)
        rope_delta = int(np.asarray(rope_deltas).reshape(-1)[0])
        return PrefillInputs(ids[0], embeds, positions, rope_delta, past, key, n_prefix)

    def _prefix_key(self, prefix_ids: np.ndarray, pres: Sequence, max_pixels: int | None, system: str) -> str:
        """The prefix cache key: this bundle and every setting that changes the prefix's k/v,
        then the prefix's ids and each image's grid and pixels (colrag.vlm.prefix_cache.prefix_key)."""
        from dataclasses import asdict

        vision = vision_graph_sha256(self.manifest)
        identity = {
            "bundle_id": self.bundle_id,
            "vision_graph": vision,  # a shared vision graph lives in the retriever bundle
            "quantization": (self.manifest.get("quantization") or {}).get("scheme", "none"),
            # backend and precision of the vision and prefill runs (bf16 k/v differ from f32)
            "runtimes": self.runtimes,
            "image_config": asdict(self.image_config),
            "min_pixels": self.min_pixels,
            "pixel_budget": self._pixel_cap(max_pixels),
            "spatial_merge_size": self.spatial_merge_size,
            "image_token_id": self.image_token_id,
            "system": system,
        }
        return prefix_key(identity, prefix_ids, [(image_cache_input(p), p.grid_thw) for p in pres])

    def _decoder_step(self, feeds: dict, past: list, session=None) -> tuple[np.ndarray, list]:
        """One decoder run (on the decode session unless another is given). The k/v cache goes in and
        out as the session's values, so it stays where the runtime keeps it (GPU memory with CUDA)
        instead of a host round trip per token."""
        session = session if session is not None else self._decoder
        outs = session.run({**feeds, **dict(zip(self._past_names, past, strict=True))}, self._output_names)
        return as_numpy(outs[0]), list(outs[1:])  # logits (1, 1, V) on the host; present k/v as they are

    def _tokens(self, prompt, images, result: Generation, config: GenerationConfig) -> Iterator[int]:
        """Run prefill then decode; yield each new token id as soon as it is chosen."""
        max_new_tokens = config.max_new_tokens
        if max_new_tokens < 1:
            raise InputError(f"max new tokens must be >= 1, got {max_new_tokens}")
        images = image_list(images)
        prompt_ids, embeds, position_ids, rope_delta, past, key, n_prefix = self._prefill_inputs(
            prompt, images, result, config.max_pixels, config.system
        )  # PrefillInputs
        sampler = Sampler(config.sampling(), self.eos_ids, config.min_new_tokens)
        seen = list(prompt_ids)  # the repetition penalty covers the prompt too, as in transformers

        start = time.perf_counter()
        if past is None:
            past = [np.zeros((1, self.num_kv_heads, 0, self.head_dim), dtype=np.float32)] * len(self._past_names)
        n_past = len(prompt_ids)
        feeds = {
            "inputs_embeds": embeds,
            "position_ids": position_ids,
            "attention_mask": np.ones((1, n_past), dtype=np.int64),
        }
        logits, past = self._decoder_step(feeds, past, self._prefill)  # (1, 1, V), 2L × (1, kv, S, hd)
        token = sampler(logits[0, -1], seen, 0)
        result.prefill_s = time.perf_counter() - start
        if key is not None and self.prefix_cache is not None and not result.prefix_cached:
            # causal attention: the first n_prefix positions of the k/v are the prefix's own
            prefix_past = [np.ascontiguousarray(as_numpy(v)[:, :, :n_prefix]) for v in past]  # 2L × (1, kv, P, hd)
            self.prefix_cache.put(key, Prefix(np.array(prompt_ids[:n_prefix]), prefix_past))

        while True:
            result.token_ids.append(token)
            seen.append(token)
            if token in self.eos_ids:
                result.finish_reason = "eos"
            elif len(result.token_ids) >= max_new_tokens:
                result.finish_reason = "length"
            yield token
            if result.finish_reason:
                return
            step = time.perf_counter()
            feeds = {
                "inputs_embeds": np.asarray(self._embed_table[[token]], dtype=np.float32)[None],  # (1, 1, H)
                "position_ids": np.full((3, 1, 1), n_past + rope_delta, dtype=np.int64),  # past length + rope delta
                "attention_mask": np.ones((1, n_past + 1), dtype=np.int64),
            }
            logits, past = self._decoder_step(feeds, past)
            n_past += 1
            token = sampler(logits[0, -1], seen, len(result.token_ids))
            result.decode_s += time.perf_counter() - step  # model time only, not the consumer's
