"""Step 2 of the answer pipeline: the retrieved pages as the generator will be shown them.

For each hit, the vision tower's output stored by the index (colrag.store.features) when
it can stand for the page with this generator: same vision tower, same hidden size, the
index's own pixel budget, features intact. Otherwise the page is rendered (colrag.render)
exactly as the index rendered it (or at --max-pixels) and the generator's vision tower
computes them later. Why stored features were not used is said once, in `Pages.notes`.
colrag.ask.Asker drives this step; the index is a local Index or a Qdrant index's catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answer import FEATURES_COMPUTED, FEATURES_INDEX, Pages
from .errors import InputError


def is_qdrant(idx: Any) -> bool:
    return hasattr(idx, "read_features")  # colrag.store.qdrant.catalog.QdrantCatalog


def open_index(target: Path | str) -> Any:
    """The local Index (read-only), or a Qdrant index's catalog (docs/SCALE.md)."""
    if isinstance(target, str):
        from .store.qdrant.catalog import open_catalog

        return open_catalog(target, None, create=False)
    from .store import Index

    return Index.open(target)


@dataclass(frozen=True)
class PageReader:
    """How pages become generator inputs for one generator and the user's options."""

    vision_hash: str | None  # the generator's vision tower
    hidden_size: int  # the generator's
    gen_max_pixels: int  # the generator's own pixel cap
    page_features: bool = True  # False: --no-page-features
    max_pixels: int | None = None  # --max-pixels
    password: str | None = None  # for encrypted PDFs

    def cap(self, index_budget: int | None) -> int:
        """The generator's pixel budget for a computed page: --max-pixels, else the index's, else the generator's."""
        cap = self.max_pixels if self.max_pixels is not None else index_budget
        return min(int(cap), self.gen_max_pixels) if cap is not None else self.gen_max_pixels

    def page_inputs(self, idx: Any, hits: list) -> Pages:
        """Stored features for each hit when they can stand for the page, else the rendered page."""
        from .store import features as page_features

        budget = int(idx.manifest.get("max_pixels") or self.gen_max_pixels)
        reason = self.features_unusable(idx, budget)
        snap = idx.snapshot() if reason is None and not is_qdrant(idx) else None
        inputs: list = []
        kinds: list[str] = []
        problems: list[str] = []
        for hit in hits:
            feats = None
            if reason is None:
                try:
                    if is_qdrant(idx):
                        feats = idx.read_features(hit.file, hit.page)
                    else:
                        feats = page_features.read_hit(idx, snap, hit.file, hit.page)
                except page_features.FeaturesUnavailable as exc:
                    problems.append(str(exc))
            if feats is not None:
                inputs.append(feats)
                kinds.append(FEATURES_INDEX)
            else:
                inputs.append(self.render(idx, hit))
                kinds.append(FEATURES_COMPUTED)
        notes = []
        if reason is not None and self.page_features:  # --no-page-features is the user's own choice: nothing to say
            notes.append(
                f"page features from the index not used ({reason}): rendering the page(s) and running the vision tower"
            )
        elif problems:
            notes.append(
                f"page features from the index not used for {len(problems)} page(s) ({problems[0]}): computing them"
            )
        return Pages(inputs, kinds, hits=hits, notes=notes, max_pixels=self.cap(budget))

    def features_unusable(self, idx: Any, budget: int) -> str | None:
        """Why the index's stored features cannot stand for its pages with this generator, or None."""
        from .store import features as page_features

        if not self.page_features:
            return "--no-page-features"
        info = page_features.manifest_info(idx.manifest)
        if info is None and is_qdrant(idx) and idx.features is None and str(idx.path).startswith("qdrant:"):
            return "a Qdrant server index keeps none (docs/SCALE.md)"
        if info is None:
            return "this index stores none; `colrag index` adds them for pages it indexes from now on"
        if not self.vision_hash or info.get("vision_hash") != self.vision_hash:
            return "the generator's vision tower differs from the one the index used"
        if int(info.get("hidden_size", -1)) != self.hidden_size:
            return "the generator's hidden size differs from the stored features'"
        if self.max_pixels is not None and int(self.max_pixels) != budget:
            return f"--max-pixels {self.max_pixels} differs from the index's budget {budget}"
        return None

    def render(self, idx: Any, hit: Any) -> Any:
        """The hit's page as an image: rendered exactly as the index rendered it, unless --max-pixels asks otherwise."""
        from .render import RenderOptions, open_pdf, render_page

        options = idx.render if self.max_pixels is None else RenderOptions(target_pixels=self.max_pixels)
        try:
            doc = open_pdf(hit.file, self.password)
        except InputError as exc:
            raise InputError(
                f"cannot open {hit.file} to read page {hit.page} ({exc}); re-index with `colrag index`"
            ) from exc
        try:
            if not 1 <= hit.page <= doc.page_count:
                raise InputError(f"{hit.file} has no page {hit.page} any more; re-index with `colrag index`")
            return render_page(doc, hit.page - 1, options).image
        finally:
            doc.close()
