"""ColQwen2 retriever on onnxruntime + numpy: pages and queries to multi-vectors.

    r = Retriever.load("models/retriever")
    pages = r.embed_images([pil_image, ...])   # [(n_tokens_i, 128) float32, ...]
    (vectors, feats), = r.embed_pages([pil_image])  # the same vectors + the vision tower's output (ImageFeatures)
    queries = r.embed_queries(["revenue in 2023?"])
    scores = colrag.maxsim(queries, pages)     # (n_queries, n_pages)

Each row is L2-normalised; padding rows are removed, every other token is kept
(prompt tokens included), as ColQwen2 does. Positions are the 3-D M-RoPE index the
checkpoint was trained with (colrag.vlm.rope.get_rope_index).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from ..errors import InputError
from .backends import LazyVision, as_numpy, open_session
from .bundle import RuntimeOptions, bundle_file, bundle_id, open_bundle
from .constants import IMAGE_PAD_ID, MAX_QUERY_TOKENS, PAD_ID
from .image_features import ImageFeatures
from .preprocess import ImageProcessorConfig, preprocess_image, vision_rot_pos_ids
from .rope import get_rope_index
from .tokenization import Tokenizer, pad_left, retriever_page_ids, retriever_query_ids


class Retriever:
    def __init__(
        self,
        bundle_dir: Path,
        manifest: dict,
        vision,
        text,
        embed_table: np.ndarray,
        tokenizer: Tokenizer,
        image_config: ImageProcessorConfig,
        *,
        vision_factory: Callable[[], Any] | None = None,
    ):
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self._vision_session = vision  # None until the first page: answering a question needs only the text graph
        self._vision_factory = vision_factory
        self._text = text
        self._embed_table = embed_table  # (vocab, hidden), memory-mapped
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.dim = int(manifest["dim"])
        self.hidden_size = int(manifest["hidden_size"])  # of the vision tower's merged output (the LM width)
        self.min_pixels = int(manifest["min_pixels"])
        self.max_pixels = int(manifest["max_pixels"])
        self.bundle_id = bundle_id(manifest)
        self.name = str(manifest.get("source", bundle_dir.name))
        self.vision_hash = manifest.get("vision_hash")
        self._prompts = manifest["prompts"]  # the exact texts of the exported checkpoint's processor
        self.page_ids(1)  # fail at load, not at the first page, if the page prompt is malformed
        self._image_token_id = int(manifest.get("image_token_id", IMAGE_PAD_ID))

    @property
    def runtimes(self) -> dict[str, str]:
        """What each graph runs on: {'vision': 'openvino bf16', 'text': ...}."""
        return {name: f"{s.backend} {s.precision}" for name, s in (("vision", self._vision), ("text", self._text))}

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, **runtime: Unpack[RuntimeOptions]) -> Retriever:
        """runtime: threads, device, backend (auto | onnxruntime | openvino), precision (auto | f32 |
        bf16); None: COLRAG_BACKEND / COLRAG_PRECISION, else auto (colrag.vlm.backends)."""
        b = open_bundle(bundle_dir, "retriever")
        graphs = b.manifest["graphs"]
        opts: dict[str, Any] = {**runtime, "cache_key": b.id}
        # the vision graph's file is checked now (a bundle without it fails here, not at the first page)
        vision_path = bundle_file(b.dir, b.manifest, graphs["vision"])
        text = open_session(bundle_file(b.dir, b.manifest, graphs["text"]), graph="text", **opts)
        return cls(
            b.dir,
            b.manifest,
            None,
            text,
            b.table,
            b.tokenizer,
            b.image_config,
            vision_factory=lambda: open_session(vision_path, graph="vision", **opts),
        )

    _vision = LazyVision()  # a query never opens it: ~0.7 s of loading saved per `ask`

    # -- prompts -----------------------------------------------------------------
    def page_ids(self, n_image_tokens: int) -> list[int]:
        """The page prompt with <|image_pad|> expanded to one id per image token."""
        return retriever_page_ids(self.tokenizer, n_image_tokens, self._prompts["page"])

    def query_ids(self, query: str) -> list[int]:
        ids = retriever_query_ids(self.tokenizer, query, self._prompts["query_prefix"], self._prompts["query_suffix"])
        if len(ids) > MAX_QUERY_TOKENS:  # see constants.py for why this limit
            raise InputError(
                f"the query is {len(ids):,} tokens long with the retriever's prompt; the limit "
                f"is {MAX_QUERY_TOKENS} tokens "
                "(about 2,000 characters): shorten it"
            )
        return ids

    # -- embedding ---------------------------------------------------------------
    def image_features(self, image) -> tuple[np.ndarray, np.ndarray]:
        """Vision tower output for one PIL image: (image_embeds (n_tokens, hidden), grid_thw (3,))."""
        pre = preprocess_image(image, self.image_config, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        rot = vision_rot_pos_ids(pre.grid_thw)  # (N, 2)
        (embeds,) = self._vision.run({"pixel_values": pre.pixel_values, "rot_pos_ids": rot})  # (N/4, hidden)
        return as_numpy(embeds), np.asarray(pre.grid_thw, dtype=np.int64)

    def embed_images(self, images: Sequence, *, batch_size: int = 1) -> list[np.ndarray]:
        """One (n_tokens_i, dim) float32 array per PIL image."""
        return [vectors for vectors, _ in self.embed_pages(images, batch_size=batch_size)]

    def embed_pages(self, images: Sequence, *, batch_size: int = 1) -> list[tuple[np.ndarray, ImageFeatures]]:
        """Per PIL image: its (n_tokens, dim) float32 vectors and the vision tower's output they were
        computed from (merged image embeddings (n_image_tokens, hidden) + grid), from one vision pass."""
        out: list[tuple[np.ndarray, ImageFeatures]] = []
        for start in range(0, len(images), max(1, batch_size)):
            batch = images[start : start + max(1, batch_size)]
            feats = [self.image_features(_check_image(img)) for img in batch]
            seqs = [self.page_ids(len(f[0])) for f in feats]
            vectors = self._embed_sequences(seqs, [f[0] for f in feats], np.stack([f[1] for f in feats]))
            out += [(v, ImageFeatures(e, g, self.vision_hash)) for v, (e, g) in zip(vectors, feats, strict=True)]
        return out

    def embed_queries(self, texts: Sequence[str], *, batch_size: int = 8) -> list[np.ndarray]:
        """One (n_tokens_i, dim) float32 array per query text."""
        out: list[np.ndarray] = []
        for text in texts:
            if not isinstance(text, str):
                raise InputError(f"a query must be text, got {type(text).__name__}")
        for start in range(0, len(texts), max(1, batch_size)):
            seqs = [self.query_ids(t) for t in texts[start : start + max(1, batch_size)]]
            out += self._embed_sequences(seqs, [], None)
        return out

    def _embed_sequences(
        self, seqs: list[list[int]], image_embeds: list[np.ndarray], grids: np.ndarray | None
    ) -> list[np.ndarray]:
        """Left-pad token sequences, splice in image features, run the LM; strip padding."""
        ids, mask = pad_left(seqs, PAD_ID)  # (B, S) each
        embeds = np.asarray(self._embed_table[ids.reshape(-1)], dtype=np.float32).reshape(*ids.shape, -1)  # (B, S, H)
        if image_embeds:
            slots = ids == self._image_token_id  # (B, S)
            feats = np.concatenate(image_embeds)  # (sum n_tokens, H)
            if int(slots.sum()) != len(feats):
                raise RuntimeError(f"{int(slots.sum())} image slots for {len(feats)} image features")
            embeds[slots] = feats
        position_ids, _ = get_rope_index(ids, grids, mask, image_token_id=self._image_token_id)  # (3, B, S)
        (vectors,) = self._text.run(
            {
                "inputs_embeds": embeds,
                "position_ids": position_ids.astype(np.int64),
                "attention_mask": mask.astype(np.int64),
            }
        )  # (B, S, dim)
        vectors = as_numpy(vectors)
        return [np.ascontiguousarray(vectors[b][mask[b].astype(bool)], dtype=np.float32) for b in range(len(seqs))]


def _check_image(image):
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    return image
