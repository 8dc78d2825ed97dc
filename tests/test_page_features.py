"""Page features: the retriever's vision-tower output stands in for the page's pixels in the generator.

Tiny checkpoints whose generator shares the retriever's vision weights (the Qwen2-VL
checkpoint gets the ColQwen2 checkpoint's vision tower; both exported by colrag's
exporter, the generator with share_vision_with): greedy tokens from the features the
retriever computed equal greedy tokens computed from the pixels at the same budget.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import colrag
from colrag.errors import InputError
from colrag.vlm.image_features import ImageFeatures
from tests.test_generator import synthetic_image

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

N_NEW = 16


@pytest.fixture(scope="module")
def retriever(tiny_retriever_bundle):
    return colrag.Retriever.load(tiny_retriever_bundle, threads=1)


@pytest.fixture(scope="module")
def shared_generator(tiny_shared_generator_bundle):
    return colrag.Generator.load(tiny_shared_generator_bundle, threads=1, prefix_cache=False)


def test_embed_pages_returns_the_vectors_and_the_vision_output(retriever):
    image = synthetic_image(300, 200, 1)
    ((vectors, feats),) = retriever.embed_pages([image])
    np.testing.assert_array_equal(vectors, retriever.embed_images([image])[0])
    embeds, grid = retriever.image_features(image)
    np.testing.assert_array_equal(feats.embeds, embeds)
    np.testing.assert_array_equal(feats.grid_thw, grid)
    assert feats.vision_hash == retriever.vision_hash and feats.n_tokens == int(np.prod(grid)) // 4


@pytest.mark.parametrize("question", ["What does this chart show?", "この図は何を示していますか?"], ids=["en", "ja"])
@pytest.mark.parametrize("n_images", [1, 2])
def test_features_give_the_greedy_tokens_of_the_pixels(question, n_images, retriever, shared_generator):
    images = [synthetic_image(260, 180, 11), synthetic_image(150, 210, 12)][:n_images]
    feats = [f for _, f in retriever.embed_pages(images)]
    fresh = shared_generator.generate(
        question, images=images, max_new_tokens=N_NEW, min_new_tokens=N_NEW, max_pixels=retriever.max_pixels
    )
    stored = shared_generator.generate(question, images=feats, max_new_tokens=N_NEW, min_new_tokens=N_NEW)
    assert len(set(fresh.token_ids)) >= 6  # the tokens vary: an equality that can fail
    assert stored.token_ids == fresh.token_ids
    assert stored.n_prompt_tokens == fresh.n_prompt_tokens and stored.n_image_tokens == fresh.n_image_tokens
    assert fresh.vision_s > 0


def test_features_of_another_tower_or_shape_are_refused(retriever, shared_generator, tiny_generator_bundle):
    image = synthetic_image(200, 200, 5)
    ((_, feats),) = retriever.embed_pages([image])
    other = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=False)  # its own vision weights
    assert other.vision_hash != feats.vision_hash
    with pytest.raises(InputError, match="another vision tower"):
        other.generate("q", images=[feats], max_new_tokens=1)
    bad = [
        ImageFeatures(feats.embeds[:-1], feats.grid_thw, feats.vision_hash),  # short
        ImageFeatures(feats.embeds[:, :-1], feats.grid_thw, feats.vision_hash),  # wrong hidden size
        ImageFeatures(np.full_like(feats.embeds, np.nan), feats.grid_thw, feats.vision_hash),
        ImageFeatures(feats.embeds, np.array([1, 0, 4]), feats.vision_hash),
    ]
    for f in bad:
        with pytest.raises(InputError, match="image features"):
            shared_generator.generate("q", images=[f], max_new_tokens=1)
