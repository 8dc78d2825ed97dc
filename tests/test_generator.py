"""Parity of the exported generator with transformers' Qwen2VLForConditionalGeneration.

The tiny random checkpoint (tests/generator_fixtures.py) is exported by colrag's own
exporter; colrag's greedy tokens must equal `generate(do_sample=False)` exactly, with
the reference prompt built independently (chat template + the processor's expansion of
<|image_pad|>) and the reference pixels from transformers' image processor.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image, ImageDraw  # noqa: E402  (after importorskip: no torch, no test)

import colrag  # noqa: E402  (after importorskip: no torch, no test)
from colrag.errors import BundleError, InputError  # noqa: E402  (after importorskip: no torch, no test)
from colrag.vlm.bundle import load_manifest, verify_bundle  # noqa: E402  (after importorskip: no torch, no test)

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

N_NEW = 24
IMAGE_PAD = "<|image_pad|>"


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(150, 256, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        draw.rectangle(
            [x0, y0, x0 + int(rng.integers(4, width // 2)), y0 + int(rng.integers(4, height // 2))],
            fill=tuple(int(c) for c in rng.integers(0, 200, 3)),
        )
    return img


class Reference:
    """transformers on the same checkpoint folder, prompts built the way Qwen2VLProcessor builds them."""

    def __init__(self, checkpoint):
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        self.model = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
        self.chat_template = json.loads((checkpoint / "chat_template.json").read_text())["chat_template"]

    def inputs(self, question: str, images=()):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )
        kwargs = {}
        if images:
            pix = self.image_processor(images=list(images), return_tensors="pt")
            for grid in pix["image_grid_thw"]:  # expand each <|image_pad|> like Qwen2VLProcessor
                text = text.replace(IMAGE_PAD, "<|placeholder|>" * (int(grid.prod()) // 4), 1)
            text = text.replace("<|placeholder|>", IMAGE_PAD)
            kwargs = {"pixel_values": pix["pixel_values"], "image_grid_thw": pix["image_grid_thw"]}
        ids = torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)])
        if images:
            kwargs["mm_token_type_ids"] = (ids == colrag.vlm.constants.IMAGE_PAD_ID).int()
        return ids, kwargs

    def generate(self, question: str, images=(), n: int = N_NEW, **gen_kwargs) -> tuple[list[int], list[int]]:
        ids, kwargs = self.inputs(question, images)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                **kwargs,
                **gen_kwargs,
            )
        return ids[0].tolist(), out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def reference(tiny_qwen2vl_checkpoint):
    return Reference(tiny_qwen2vl_checkpoint)


@pytest.fixture(scope="module")
def generator(tiny_generator_bundle):
    return colrag.Generator.load(tiny_generator_bundle, threads=1)


# -- the bundle ----------------------------------------------------------------------


def test_bundle_manifest(tiny_generator_bundle):
    m = verify_bundle(tiny_generator_bundle, "generator")
    assert m["kind"] == "generator"
    for name in (
        "vision.onnx",
        "decoder.onnx",
        "embed_tokens.npy",
        "tokenizer.json",
        "generation_config.json",
        "preprocessor_config.json",
    ):
        assert name in m["files"]
    assert (m["hidden_size"], m["num_layers"], m["num_kv_heads"], m["head_dim"], m["vocab_size"]) == (
        64,
        2,
        2,
        16,
        151936,
    )
    assert m["eos_token_ids"] == [151645, 151643]
    assert m["max_pixels"] == colrag.vlm.constants.GENERATOR_MAX_PIXELS
    assert len(m["vision_hash"]) == 64
    assert set(m["export_checks"]) >= {
        "vision_export_grid_max_abs_diff",
        "vision_check_grid_max_abs_diff",
        "decoder_prefill_decode_max_abs_diff",
    }


def test_decoder_graph_has_its_own_lm_head_and_no_embedding_table(tiny_generator_bundle):
    import onnx

    model = onnx.load(str(tiny_generator_bundle / "decoder.onnx"), load_external_data=False)
    big = [list(t.dims) for t in model.graph.initializer if 151936 in t.dims]
    assert len(big) == 1, big  # lm_head only; the embedding table lives in embed_tokens.npy
    names = [i.name for i in model.graph.input]
    assert names[:3] == ["inputs_embeds", "position_ids", "attention_mask"]
    assert names[3:] == ["past_key_0", "past_value_0", "past_key_1", "past_value_1"]


# -- greedy parity -------------------------------------------------------------------

CASES = {
    "export-grid-image": ("What does this chart show?", [(168, 224, 1)]),  # the grid the vision graph was traced at
    "landscape-image": ("Describe the image.", [(300, 200, 2)]),
    "tall-small-image": ("Describe the image.", [(90, 260, 3)]),
    "two-images": ("Compare the two pictures.", [(200, 150, 4), (120, 180, 5)]),
    "text-only": ("Write a haiku about the sea.", []),
    "japanese": ("この図は何を示していますか?", [(140, 140, 6)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_equal_transformers(case, generator, reference):
    question, sizes = CASES[case]
    images = [synthetic_image(w, h, s) for w, h, s in sizes]
    ref_prompt, ref_tokens = reference.generate(question, images)
    assert len(set(ref_tokens)) >= 8, "the tiny model must produce varied tokens for the test to mean anything"
    assert generator.prompt_ids(question, [int(n) for n in _image_token_counts(reference, images)]) == ref_prompt
    out = generator.generate(question, images=images, max_new_tokens=N_NEW, min_new_tokens=N_NEW)
    assert out.token_ids == ref_tokens
    assert out.n_prompt_tokens == len(ref_prompt)
    assert out.finish_reason == "length"
    assert out.prefill_s > 0 and out.decode_s > 0 and (out.vision_s > 0) == bool(images)


def _image_token_counts(reference, images):
    if not images:
        return []
    grids = reference.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    return [int(g.prod()) // 4 for g in grids]


def test_repetition_penalty_equals_transformers(generator, reference):
    question = "Repeat after me: la la la"
    _, ref_tokens = reference.generate(question, (), repetition_penalty=1.5)
    out = generator.generate(question, max_new_tokens=N_NEW, min_new_tokens=N_NEW, repetition_penalty=1.5)
    assert out.token_ids == ref_tokens
    _, plain = reference.generate(question, ())
    assert plain != ref_tokens  # the penalty changed something


def test_lower_max_pixels_means_fewer_image_tokens(generator):
    img = synthetic_image(640, 480, 7)
    full = generator.generate("Describe.", images=[img], max_new_tokens=2)
    small = generator.generate("Describe.", images=[img], max_new_tokens=2, max_pixels=64 * 28 * 28)
    assert small.n_image_tokens <= 64 < full.n_image_tokens


# -- sampling -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperature,top_k,top_p,penalty",
    [(0.7, 0, 1.0, 1.0), (1.0, 50, 1.0, 1.0), (1.3, 0, 0.9, 1.2), (0.5, 20, 0.8, 1.1)],
)
def test_logits_processing_equals_transformers(temperature, top_k, top_p, penalty):
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from colrag.vlm.sampling import Sampler, SamplingParams

    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal(1000)).astype(np.float32)
    seen = rng.integers(0, 1000, 40)
    procs = [RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
    procs += [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    procs += [TopKLogitsWarper(top_k)] if top_k else []
    procs += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    want = torch.from_numpy(logits)[None]
    for p in procs:
        want = p(torch.from_numpy(seen)[None], want)
    want = want[0].numpy()
    got = Sampler(SamplingParams(temperature, top_p, top_k, penalty)).process(logits, seen.tolist(), 0)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6)
    assert 0 < finite.sum() < len(logits) or (top_k == 0 and top_p == 1.0)


def test_sampling_with_a_seed_is_reproducible(generator):
    kwargs = dict(max_new_tokens=16, min_new_tokens=16, temperature=1.0, top_k=100, top_p=0.95)
    a = generator.generate("Tell me a story.", seed=123, **kwargs)
    b = generator.generate("Tell me a story.", seed=123, **kwargs)
    c = generator.generate("Tell me a story.", seed=124, **kwargs)
    greedy = generator.generate("Tell me a story.", max_new_tokens=16, min_new_tokens=16)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert a.token_ids != greedy.token_ids


def test_bad_sampling_options_are_input_errors(generator):
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"repetition_penalty": 0}, {"max_new_tokens": 0}):
        with pytest.raises(InputError):
            generator.generate("hi", **kwargs)


# -- streaming and stopping -----------------------------------------------------------


class ForcedSampler:
    """Stands in for colrag.vlm.sampling.Sampler: emits a fixed token sequence."""

    tokens: ClassVar[list[int]] = []

    def __init__(self, *args, **kwargs):
        self.i = 0

    def __call__(self, logits, seen, n_generated):
        token = self.tokens[self.i]
        self.i += 1
        return token


def test_japanese_answer_streams_without_replacement_characters(generator, monkeypatch):
    answer = "この図は2023年の売上高を示しています。🙂"
    ids = generator.tokenizer.encode(answer)
    assert len(ids) < len(answer.encode("utf-8"))  # byte-level pieces: some characters span several tokens
    ForcedSampler.tokens = [*ids, colrag.vlm.constants.IM_END_ID]
    monkeypatch.setattr("colrag.vlm.generator.Sampler", ForcedSampler)
    result = colrag.vlm.generator.Generation()
    pieces = list(generator.stream("日本語で答えてください。", result=result, max_new_tokens=100))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == answer == result.text
    assert result.finish_reason == "eos"
    assert result.token_ids == [*ids, colrag.vlm.constants.IM_END_ID]


def test_generation_stops_on_eos(generator, monkeypatch):
    ForcedSampler.tokens = [*generator.tokenizer.encode("Hello world"), colrag.vlm.constants.ENDOFTEXT_ID, 11, 12]
    monkeypatch.setattr("colrag.vlm.generator.Sampler", ForcedSampler)
    out = generator.generate("hi", max_new_tokens=50)
    assert out.finish_reason == "eos"
    assert out.text == "Hello world"
    assert out.token_ids[-1] == colrag.vlm.constants.ENDOFTEXT_ID


def test_stream_equals_generate(generator):
    img = synthetic_image(200, 120, 8)
    out = generator.generate("What is shown?", images=[img], max_new_tokens=12)
    assert (
        generator.generate("What is shown?", images=img, max_new_tokens=12).token_ids == out.token_ids
    )  # one image, not a list
    result = colrag.vlm.generator.Generation()
    pieces = list(generator.stream("What is shown?", images=[img], max_new_tokens=12, result=result))
    assert result.token_ids == out.token_ids
    assert "".join(pieces) == result.text == out.text


# -- errors --------------------------------------------------------------------------


def test_missing_bundle_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError):
        colrag.Generator.load(tmp_path / "nope")


def test_retriever_bundle_is_not_a_generator(tiny_retriever_bundle):
    with pytest.raises(BundleError, match="retriever"):
        colrag.Generator.load(tiny_retriever_bundle)


def test_unreadable_image_is_an_input_error(generator, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError):
        generator.generate("hi", images=[bad], max_new_tokens=1)
    with pytest.raises(InputError):
        generator.generate("hi", images=[tmp_path / "missing.png"], max_new_tokens=1)


# -- sharing the retriever's vision tower ------------------------------------------------


def test_shared_vision_tower_is_reused(
    tiny_shared_generator_bundle, tiny_retriever_bundle, tiny_qwen2vl_shared_checkpoint
):
    m = load_manifest(tiny_shared_generator_bundle, "generator")
    assert "vision" not in m["graphs"]
    assert not any(name.startswith("vision") for name in m["files"])  # no second copy
    assert m["vision_hash"] == load_manifest(tiny_retriever_bundle, "retriever")["vision_hash"]
    assert (tiny_shared_generator_bundle / m["shared_vision"]["bundle"]).resolve() == tiny_retriever_bundle.resolve()

    gen = colrag.Generator.load(tiny_shared_generator_bundle, threads=1)
    ref = Reference(tiny_qwen2vl_shared_checkpoint)
    images = [synthetic_image(260, 180, 9)]
    _, ref_tokens = ref.generate("Describe the image.", images)
    assert len(set(ref_tokens)) >= 8
    assert (
        gen.generate("Describe the image.", images=images, max_new_tokens=N_NEW, min_new_tokens=N_NEW).token_ids
        == ref_tokens
    )


def test_shared_vision_with_a_different_tower_exports_a_copy(tiny_qwen2vl_checkpoint, tiny_retriever_bundle, tmp_path):
    from colrag.export.generator import _shared_vision

    # the unshared tiny checkpoint has other vision weights: no sharing
    m_retriever = load_manifest(tiny_retriever_bundle, "retriever")
    assert _shared_vision(tiny_retriever_bundle, tmp_path / "generator", "0" * 64) is None
    assert _shared_vision(tiny_retriever_bundle, tmp_path / "generator", m_retriever["vision_hash"]) is not None


def test_shared_vision_mismatch_is_refused(tiny_shared_generator_bundle, tmp_path):
    import shutil

    from colrag.fsutil import atomic_write_json

    gen_copy = tmp_path / "generator"
    shutil.copytree(tiny_shared_generator_bundle, gen_copy)
    m = json.loads((gen_copy / "manifest.json").read_text())
    m["vision_hash"] = "f" * 64  # as if the retriever bundle had been replaced by another model's
    m["shared_vision"]["bundle"] = str((tiny_shared_generator_bundle / m["shared_vision"]["bundle"]).resolve())
    atomic_write_json(gen_copy / "manifest.json", m)
    with pytest.raises(BundleError, match="different vision weights"):
        colrag.Generator.load(gen_copy)


def test_tied_embeddings_export(tmp_path):
    """Qwen2-VL-2B-Instruct ties lm_head to the embeddings: the decoder still gets lm_head as its own weight."""
    import onnx

    from colrag.export.generator import export_generator
    from tests.generator_fixtures import require_tokenizer, save_generator_processor
    from tests.tiny_models import randomize_, tiny_qwen2vl_config

    require_tokenizer()
    from transformers import Qwen2VLForConditionalGeneration

    config = tiny_qwen2vl_config(text={"tie_word_embeddings": True})
    config.tie_word_embeddings = True
    model = Qwen2VLForConditionalGeneration(config).eval()
    randomize_(model, 5)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    ckpt = tmp_path / "tied"
    model.save_pretrained(ckpt)
    save_generator_processor(ckpt)
    bundle = tmp_path / "bundle"
    manifest = export_generator(ckpt, bundle)
    assert manifest["tie_word_embeddings"] is True

    graph = onnx.load(str(bundle / "decoder.onnx"), load_external_data=True)
    (lm_head,) = [t for t in graph.graph.initializer if 151936 in t.dims]
    table = np.load(bundle / "embed_tokens.npy")
    w = onnx.numpy_helper.to_array(lm_head)
    assert np.array_equal(w.T if w.shape[0] != table.shape[0] else w, table)

    ref = Reference(ckpt)
    _, ref_tokens = ref.generate("Hello, who are you?", ())
    out = colrag.Generator.load(bundle, threads=1).generate(
        "Hello, who are you?", max_new_tokens=N_NEW, min_new_tokens=N_NEW
    )
    assert out.token_ids == ref_tokens


def test_int8_bundle_records_drift_and_generates(tiny_generator_bundle, tmp_path):
    from colrag.export import quantize_bundle

    bundle = tmp_path / "int8"
    manifest = quantize_bundle(tiny_generator_bundle, bundle, "int8")  # the export's own quantize step
    verify_bundle(bundle, "generator")
    assert verify_bundle(tiny_generator_bundle, "generator").get("quantization") is None  # the source is untouched
    q = manifest["quantization"]
    assert q["scheme"] == "int8"
    dec = q["graphs"]["decoder"]
    assert dec["quantized_matmuls"] > 0
    drift = dec["decoder_prefill_decode"]
    assert drift["mean_cosine_vs_fp32"] > 0.99 and 0 <= drift["top1_agreement_vs_fp32"] <= 1
    assert q["graphs"]["vision"]["quantized_matmuls"] > 0
    out = colrag.Generator.load(bundle, threads=1).generate(
        "Describe.", images=[synthetic_image(120, 90, 1)], max_new_tokens=4
    )
    assert len(out.token_ids) == 4


def test_dynamic_vision_scheme_generator(tiny_qwen2vl_checkpoint, tiny_generator_bundle, tmp_path):
    import onnx

    from colrag.export import quantize_bundle
    from colrag.export.generator import export_generator

    bundle = tmp_path / "int8-dynamic-vision"
    manifest = export_generator(tiny_qwen2vl_checkpoint, bundle, quantize="int8-dynamic-vision")
    verify_bundle(bundle, "generator")
    # the fp32 bundle quantized afterwards: this export's very files and drift record
    derived = quantize_bundle(tiny_generator_bundle, tmp_path / "derived", "int8-dynamic-vision")
    assert derived["quantization"] == manifest["quantization"]
    assert {k: v["sha256"] for k, v in derived["files"].items()} == {
        k: v["sha256"] for k, v in manifest["files"].items()
    }
    graphs = manifest["quantization"]["graphs"]
    assert graphs["vision"]["method"].startswith("dynamic") and graphs["decoder"]["block_size"] == 128
    assert graphs["vision"]["vision_check_grid"]["min_cosine_vs_fp32"] >= 0.99
    vision_ops = {n.op_type for n in onnx.load(bundle / "vision.onnx", load_external_data=False).graph.node}
    assert "MatMulInteger" in vision_ops and "MatMulNBits" not in vision_ops
    out = colrag.Generator.load(bundle, threads=1).generate(
        "Describe.", images=[synthetic_image(120, 90, 1)], max_new_tokens=4
    )
    assert len(out.token_ids) == 4


def test_quantized_shared_generator_still_finds_the_retrievers_vision_graph(tiny_shared_generator_bundle, tmp_path):
    from colrag.export import quantize_bundle

    bundle = tmp_path / "elsewhere" / "generator-int8"  # another folder: the relative link to the retriever moves
    manifest = quantize_bundle(tiny_shared_generator_bundle, bundle, "int8")
    assert set(manifest["quantization"]["graphs"]) == {"decoder"}  # the shared vision graph stays the retriever's
    assert "vision.onnx" not in manifest["files"]
    g = colrag.Generator.load(bundle, threads=1)
    assert g.vision_graph(bundle, manifest) == colrag.Generator.vision_graph(
        tiny_shared_generator_bundle, load_manifest(tiny_shared_generator_bundle)
    )
    out = g.generate("Describe.", images=[synthetic_image(120, 90, 1)], max_new_tokens=3)
    assert len(out.token_ids) == 3
