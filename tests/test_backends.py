"""The backend layer: choice rules, the onnxruntime session, and the OpenVINO path against it.

OpenVINO tests need the `openvino` extra (CI installs it) and skip, saying so, without it.
Bounds: f32 OpenVINO equals f32 onnxruntime on the fp32 tiny bundle within 1e-4 (max abs);
bf16 keeps every page/query row at cosine >= BF16_MIN_COSINE (measured on the tiny model:
min 0.9995, docs/BENCHMARKS.md "OpenVINO"). Greedy tokens are equal in f32; in bf16 the tiny
std-0.2 model is chaotic (any perturbation changes its answer), so bf16 answers are not compared.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import colrag
from colrag.compare import row_cosines
from colrag.errors import ColragError
from colrag.vlm import backends
from colrag.vlm.constants import SYSTEM_PROMPT
from colrag.vlm.generator import Generation
from tests.test_retriever import synthetic_page

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

F32_TOL = 1e-4
BF16_MIN_COSINE = 0.998
# the generator's decoder in bf16 vs onnxruntime f32 on the tiny model, teacher-forced (measured: see
# docs/BENCHMARKS.md "OpenVINO", generator rows)
DECODER_BF16_MIN_COSINE = 0.999  # measured 0.99953 min, 0.99980 mean over 16 steps
DECODER_BF16_MIN_TOP1 = 0.75  # measured 15/16
BF16_KV_MIN_COSINE = 0.999  # a bf16 prefill's k/v rows vs onnxruntime f32, tiny model: measured 0.99966 min
QUERIES = ["What does the chart show?", "total revenue by year", "このページの内容は？"]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAS_OPENVINO, reason="openvino is not installed (pip install 'colrag[openvino]')"
)


# -- choice rules (no OpenVINO needed) ----------------------------------------------------


def test_explicit_backend_applies_to_every_graph():
    assert {backends.graph_backend(g, "onnxruntime") for g in backends.GRAPHS} == {"onnxruntime"}
    assert backends.graph_precision("onnxruntime", "auto") == "f32"


def test_auto_runs_on_openvino_the_graphs_measured_faster_there(monkeypatch):
    monkeypatch.setattr(backends, "openvino_installed", lambda: True)
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    auto = [backends.graph_backend(g, "auto") for g in backends.GRAPHS]
    assert auto == ["openvino" if g in backends.AUTO_OPENVINO_GRAPHS else "onnxruntime" for g in backends.GRAPHS]
    # vision, text and prefill were measured faster on OpenVINO (bf16, full size, quiet machine); the
    # one-token decode step on onnxruntime (docs/BENCHMARKS.md)
    assert dict(zip(backends.GRAPHS, auto, strict=True)) == {
        "vision": "openvino",
        "text": "openvino",
        "prefill": "openvino",
        "decode": "onnxruntime",
    }
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2"}))  # not the kind of CPU it was measured on
    assert {backends.graph_backend(g, "auto") for g in backends.GRAPHS} == {"onnxruntime"}
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512f"}))
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    assert {backends.graph_backend(g, "auto") for g in backends.GRAPHS} == {"onnxruntime"}


def test_environment_variables_choose_when_no_argument(monkeypatch):
    monkeypatch.setenv("COLRAG_BACKEND", "openvino")
    monkeypatch.setattr(backends, "openvino_installed", lambda: True)
    assert backends.graph_backend("decode") == "openvino"
    assert backends.graph_backend("decode", "onnxruntime") == "onnxruntime"  # the argument wins
    monkeypatch.setenv("COLRAG_PRECISION", "f32")
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    assert backends.graph_precision("openvino") == "f32"
    monkeypatch.delenv("COLRAG_PRECISION")
    assert backends.graph_precision("openvino") == "bf16"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    assert backends.graph_precision("openvino") == "f32"


def test_bad_requests_are_one_line_errors(monkeypatch, tiny_retriever_bundle):
    with pytest.raises(ColragError, match="unknown backend 'cuda'"):
        colrag.Retriever.load(tiny_retriever_bundle, backend="cuda")
    with pytest.raises(ColragError, match="unknown precision"):
        colrag.Retriever.load(tiny_retriever_bundle, precision="fp8")
    with pytest.raises(ColragError, match="bf16 needs the openvino backend"):
        colrag.Retriever.load(tiny_retriever_bundle, backend="onnxruntime", precision="bf16")
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    with pytest.raises(ColragError, match=r"pip install 'colrag\[openvino\]'"):
        colrag.Retriever.load(tiny_retriever_bundle, backend="openvino")
    monkeypatch.setattr(backends, "openvino_installed", lambda: True)
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    with pytest.raises(ColragError, match="no native bf16"):
        backends.graph_precision("openvino", "bf16")


def test_onnxruntime_session_names_shapes_and_numpy_outputs(tiny_retriever_bundle):
    s = backends.open_session(tiny_retriever_bundle / "text.onnx", graph="text", backend="onnxruntime")
    assert (s.backend, s.precision) == ("onnxruntime", "f32")
    assert list(s.inputs) == ["inputs_embeds", "position_ids", "attention_mask"] and len(s.inputs["position_ids"]) == 3
    hidden = s.inputs["inputs_embeds"][-1]
    feeds = {
        "inputs_embeds": np.zeros((1, 4, hidden), np.float32),
        "position_ids": np.tile(np.arange(4), (3, 1, 1)),
        "attention_mask": np.ones((1, 4), np.int64),
    }
    (out,) = s.run(feeds)
    assert isinstance(out, np.ndarray) and out.shape[:2] == (1, 4) and out.shape[2] == 128


def test_doctor_names_backend_and_precision(monkeypatch):
    from colrag.doctor import FAIL, OK, check_backend

    check = check_backend("onnxruntime", "f32")
    assert check.status == OK and "vision on onnxruntime" in check.detail and " f32" in check.detail
    assert check_backend("onnxruntime", "bf16").status == FAIL


# -- OpenVINO against onnxruntime ------------------------------------------------------------

PAGES = [synthetic_page(850, 1100, 1), synthetic_page(1280, 720, 2)]


@pytest.fixture(scope="module")
def onnxruntime_embeddings(tiny_retriever_bundle):
    r = colrag.Retriever.load(tiny_retriever_bundle, backend="onnxruntime")
    return r.embed_images(PAGES), r.embed_queries(QUERIES)


@needs_openvino
def test_openvino_f32_embeddings_equal_onnxruntime(tiny_retriever_bundle, onnxruntime_embeddings):
    r = colrag.Retriever.load(tiny_retriever_bundle, backend="openvino", precision="f32")
    assert r.runtimes == {"vision": "openvino f32", "text": "openvino f32"}
    pages, queries = onnxruntime_embeddings
    for got, want in zip(r.embed_images(PAGES) + r.embed_queries(QUERIES), pages + queries, strict=True):
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() <= F32_TOL


@needs_openvino
def test_openvino_bf16_embeddings_within_the_recorded_bound(tiny_retriever_bundle, onnxruntime_embeddings, monkeypatch):
    if not backends.cpu_has_bf16():
        pytest.skip("this CPU has no native bf16")
    r = colrag.Retriever.load(tiny_retriever_bundle, backend="openvino", precision="bf16")
    assert r.runtimes["vision"] == "openvino bf16"
    pages, queries = onnxruntime_embeddings
    got = r.embed_images(PAGES) + r.embed_queries(QUERIES)
    cosines = np.concatenate([row_cosines(g, w) for g, w in zip(got, pages + queries, strict=True)])
    assert cosines.min() >= BF16_MIN_COSINE
    assert (
        max(np.abs(g - w).max() for g, w in zip(got, pages + queries, strict=True)) > F32_TOL
    )  # it did compute in bf16


@needs_openvino
@pytest.mark.parametrize("sizes", [[(300, 200, 2)], []], ids=["image", "text-only"])
def test_openvino_f32_greedy_tokens_equal_onnxruntime(tiny_generator_bundle, sizes):
    from tests.test_generator import synthetic_image

    images = [synthetic_image(w, h, s) for w, h, s in sizes]
    question = "Describe the image." if images else "Write a haiku about the sea."
    want = colrag.Generator.load(tiny_generator_bundle, backend="onnxruntime", prefix_cache=False).generate(
        question, images=images, max_new_tokens=16, min_new_tokens=16
    )
    g = colrag.Generator.load(tiny_generator_bundle, backend="openvino", precision="f32")
    assert g.runtimes == {"vision": "openvino f32", "prefill": "openvino f32", "decode": "openvino f32"}
    assert g._prefill is g._decoder  # one session when both run on the same backend
    first = g.generate(question, images=images, max_new_tokens=16, min_new_tokens=16)
    again = g.generate(question, images=images, max_new_tokens=16, min_new_tokens=16)  # the prefix cache's k/v
    assert len(set(want.token_ids)) >= 4
    assert first.token_ids == want.token_ids and again.token_ids == want.token_ids
    assert again.prefix_cached == bool(images)


@needs_openvino
@pytest.mark.parametrize("sizes", [[(300, 200, 2)], []], ids=["image", "text-only"])
def test_auto_prefills_on_openvino_and_decodes_on_onnxruntime_with_the_same_tokens(
    tiny_generator_bundle, monkeypatch, sizes
):
    """`auto` on an AVX-512 CPU: the prompt's k/v come out of OpenVINO's state once, after the prefill,
    and the decode steps run on onnxruntime; in f32 the greedy tokens are onnxruntime's own, on the
    first question and on a second one whose page prefix comes from the prefix cache."""
    from tests.test_generator import synthetic_image

    images = [synthetic_image(w, h, s) for w, h, s in sizes]
    question = "Describe the image." if images else "Write a haiku about the sea."
    want = colrag.Generator.load(tiny_generator_bundle, backend="onnxruntime", prefix_cache=False).generate(
        question, images=images, max_new_tokens=16, min_new_tokens=16
    )
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512f"}))
    g = colrag.Generator.load(tiny_generator_bundle, backend="auto", precision="f32")
    assert g.runtimes == {"vision": "openvino f32", "prefill": "openvino f32", "decode": "onnxruntime f32"}
    assert g._prefill is not g._decoder
    first = g.generate(question, images=images, max_new_tokens=16, min_new_tokens=16)
    again = g.generate(question, images=images, max_new_tokens=16, min_new_tokens=16)
    assert len(set(want.token_ids)) >= 4
    assert first.token_ids == want.token_ids and again.token_ids == want.token_ids
    assert again.prefix_cached == bool(images)


@needs_openvino
@pytest.mark.skipif(not HAS_OPENVINO or not backends.cpu_has_bf16(), reason="no native bf16 on this CPU")
def test_bf16_prefill_hands_its_cache_to_onnxruntime_within_the_recorded_bound(tiny_generator_bundle):
    """The k/v a bf16 prefill leaves in OpenVINO's state come out as float32 values (not bf16 bit
    patterns) close to onnxruntime's own, and onnxruntime decodes on from them within the bf16 bound."""
    g, images, tokens, want = _onnxruntime_reference(tiny_generator_bundle)
    path = tiny_generator_bundle / g.manifest["graphs"]["decoder"]
    bf16 = backends.open_session(path, graph="prefill", backend="openvino", precision="bf16")
    pre = g._prefill_inputs("Describe the image.", images, Generation(), None, SYSTEM_PROMPT)
    feeds = {
        "inputs_embeds": pre.embeds,
        "position_ids": pre.positions,
        "attention_mask": np.ones((1, len(pre.prompt_ids)), np.int64),
    }
    empty = [np.zeros((1, g.num_kv_heads, 0, g.head_dim), np.float32)] * len(g._past_names)
    _, ort_past = g._decoder_step(feeds, empty)
    _, ov_past = g._decoder_step(feeds, empty, bf16)
    for got_kv, want_kv in zip(ov_past, ort_past, strict=True):
        got_kv = backends.as_numpy(got_kv)
        assert got_kv.dtype == np.float32 and got_kv.shape == want_kv.shape
        assert row_cosines(got_kv.reshape(-1, g.head_dim), want_kv.reshape(-1, g.head_dim)).min() >= BF16_KV_MIN_COSINE
    got = _teacher_forced_logits(g, g._decoder, "Describe the image.", images, tokens[:-1], prefill=bf16)
    assert row_cosines(got, want).min() >= DECODER_BF16_MIN_COSINE
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= DECODER_BF16_MIN_TOP1


@needs_openvino
@pytest.mark.parametrize(("build_with", "search_with"), [("onnxruntime", "openvino"), ("openvino", "onnxruntime")])
def test_index_built_with_one_backend_searched_with_the_other(tmp_path, tiny_retriever_bundle, build_with, search_with):
    from colrag.indexer import Indexer
    from colrag.search import Searcher
    from colrag.store import Index, RetrieverInfo
    from tests.index_helpers import make_pdf

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, "alpha")
    make_pdf(docs / "b.pdf", 2, "beta")
    builder = colrag.Retriever.load(tiny_retriever_bundle, backend=build_with, precision="f32")
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(builder)) as index:
        report = Indexer(index, builder).run([docs])
    assert report.pages == 4 and not report.failures
    searcher = colrag.Retriever.load(tiny_retriever_bundle, backend=search_with, precision="f32")
    with Index.open(tmp_path / "ix") as index:
        hits = {q: Searcher(index, searcher).search(q, 4) for q in QUERIES}
        same = {q: Searcher(index, builder).search(q, 4) for q in QUERIES}
    for q in QUERIES:
        assert [(h.file, h.page) for h in hits[q]] == [(h.file, h.page) for h in same[q]]
        assert np.allclose([h.score for h in hits[q]], [h.score for h in same[q]], atol=1e-3)


@needs_openvino
def test_compiled_models_are_cached_per_precision(tiny_retriever_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("COLRAG_HOME", str(tmp_path / "home"))
    first = colrag.Retriever.load(tiny_retriever_bundle, backend="openvino", precision="f32", threads=1)
    root = tmp_path / "home" / "cache" / "openvino" / first.bundle_id
    assert [p.name for p in root.iterdir()] == ["f32-t1"]
    assert len(list((root / "f32-t1").glob("*.blob"))) == 1  # text: the vision graph loads at the first page
    first._vision  # noqa: B018  (the attribute opens the vision graph)
    assert len(list((root / "f32-t1").glob("*.blob"))) == 2  # vision and text
    again = colrag.Retriever.load(
        tiny_retriever_bundle, backend="openvino", precision="f32", threads=1
    )  # from the cache
    q1, q2 = first.embed_queries(QUERIES[:1])[0], again.embed_queries(QUERIES[:1])[0]
    assert np.array_equal(q1, q2)
    if backends.cpu_has_bf16():  # another precision never reuses the f32 blobs
        colrag.Retriever.load(tiny_retriever_bundle, backend="openvino", precision="bf16", threads=1)
        assert sorted(p.name for p in root.iterdir()) == ["bf16-t1", "f32-t1"]


def test_every_model_command_takes_backend_and_precision():
    from typer.testing import CliRunner

    from colrag.cli import _register_commands, app

    _register_commands()
    for command in (["index"], ["search"], ["ask"], ["eval"], ["models", "compare"], ["doctor"]):
        result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, command
        assert "--backend" in result.stdout and "--precision" in result.stdout, command


# -- the generator's decoder on OpenVINO: k/v in the request's state -------------------------


def _onnxruntime_reference(bundle):
    """The tiny generator on onnxruntime, an image, its 16 greedy tokens and their teacher-forced logits."""
    from tests.test_generator import synthetic_image

    images = [synthetic_image(300, 200, 2)]
    g = colrag.Generator.load(bundle, backend="onnxruntime", prefix_cache=False)
    tokens = g.generate("Describe the image.", images=images, max_new_tokens=16, min_new_tokens=16).token_ids
    return g, images, tokens, _teacher_forced_logits(g, g._decoder, "Describe the image.", images, tokens[:-1])


def _teacher_forced_logits(g, session, question: str, images: list, tokens: list[int], prefill=None) -> np.ndarray:
    """Last-position logits of the prefill and of a decode step per given token, on one session
    (the same tokens fed to every runtime, so that a near-tie cannot send two runs apart); `prefill`:
    another session for the prompt, whose k/v the decode steps take over."""
    pre = g._prefill_inputs(question, images, Generation(), None, SYSTEM_PROMPT)
    ids, embeds, positions, delta = pre.prompt_ids, pre.embeds, pre.positions, pre.rope_delta
    past = [np.zeros((1, g.num_kv_heads, 0, g.head_dim), np.float32)] * len(g._past_names)
    feeds = {"inputs_embeds": embeds, "position_ids": positions, "attention_mask": np.ones((1, len(ids)), np.int64)}
    logits, past = g._decoder_step(feeds, past, prefill if prefill is not None else session)
    rows, n = [logits[0, -1]], len(ids)
    for token in tokens:
        feeds = {
            "inputs_embeds": np.asarray(g._embed_table[[token]], dtype=np.float32)[None],
            "position_ids": np.full((3, 1, 1), n + delta, dtype=np.int64),
            "attention_mask": np.ones((1, n + 1), dtype=np.int64),
        }
        logits, past = g._decoder_step(feeds, past, session)
        rows.append(logits[0, -1])
        n += 1
    return np.stack(rows)


@needs_openvino
def test_openvino_decoder_keeps_the_cache_in_its_state(tiny_generator_bundle):
    from colrag.vlm.ov_decoder import OpenvinoStatefulDecoder, StaleStateError, StateValue

    g = colrag.Generator.load(tiny_generator_bundle, backend="onnxruntime", prefix_cache=False)
    path = tiny_generator_bundle / g.manifest["graphs"]["decoder"]
    ov = backends.open_session(path, graph="decode", backend="openvino", precision="f32")
    assert isinstance(ov, OpenvinoStatefulDecoder)
    pre = g._prefill_inputs("Write a haiku.", [], Generation(), None, SYSTEM_PROMPT)
    ids, embeds, positions = pre.prompt_ids, pre.embeds, pre.positions
    empty = [np.zeros((1, g.num_kv_heads, 0, g.head_dim), np.float32)] * len(g._past_names)
    feeds = {"inputs_embeds": embeds, "position_ids": positions, "attention_mask": np.ones((1, len(ids)), np.int64)}
    want_logits, want_past = g._decoder_step(feeds, empty)
    logits, past = g._decoder_step(feeds, empty, ov)
    assert np.abs(logits - want_logits).max() <= F32_TOL
    assert all(isinstance(v, StateValue) and v.shape == w.shape for v, w in zip(past, want_past, strict=True))
    assert max(np.abs(backends.as_numpy(v) - w).max() for v, w in zip(past, want_past, strict=True)) <= F32_TOL
    # arrays from elsewhere (another runtime, the prefix cache) are loaded into the state
    again, _ = g._decoder_step(feeds, empty, ov)
    assert np.abs(again - want_logits).max() <= F32_TOL
    with pytest.raises(StaleStateError):  # the handles of the first run were overwritten by the second
        backends.as_numpy(past[0])


@needs_openvino
@pytest.mark.parametrize("roles", [{"vision", "decode"}, {"vision", "prefill", "decode"}], ids=["decode", "both"])
def test_decode_on_openvino_gives_the_same_tokens_in_f32(tiny_generator_bundle, monkeypatch, roles):
    """Prefill on onnxruntime handing its k/v to a decode on OpenVINO, or both on OpenVINO (one session),
    with the prefix cache's k/v loaded into the state on the second question."""
    from tests.test_generator import synthetic_image

    images = [synthetic_image(300, 200, 2)]
    want = colrag.Generator.load(tiny_generator_bundle, backend="onnxruntime", prefix_cache=False).generate(
        "Describe the image.", images=images, max_new_tokens=16, min_new_tokens=16
    )
    monkeypatch.setattr(backends, "AUTO_OPENVINO_GRAPHS", frozenset(roles))
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512f"}))
    g = colrag.Generator.load(tiny_generator_bundle, backend="auto", precision="f32")
    assert g.runtimes["decode"] == "openvino f32"
    assert (g._prefill is g._decoder) == ("prefill" in roles)
    first = g.generate("Describe the image.", images=images, max_new_tokens=16, min_new_tokens=16)
    again = g.generate("Describe the image.", images=images, max_new_tokens=16, min_new_tokens=16)
    assert len(set(want.token_ids)) >= 4
    assert first.token_ids == want.token_ids and again.token_ids == want.token_ids
    assert again.prefix_cached


@needs_openvino
@pytest.mark.skipif(not HAS_OPENVINO or not backends.cpu_has_bf16(), reason="no native bf16 on this CPU")
def test_openvino_bf16_decoder_logits_within_the_recorded_bound(tiny_generator_bundle):
    """bf16 prefill and decode against onnxruntime f32, teacher-forced on onnxruntime's greedy tokens:
    every step's logits keep cosine >= DECODER_BF16_MIN_COSINE and most top-1 tokens agree (the tiny
    std-0.2 model has near-tie logits, so a few flips are expected; docs/BENCHMARKS.md)."""
    g, images, tokens, want = _onnxruntime_reference(tiny_generator_bundle)
    path = tiny_generator_bundle / g.manifest["graphs"]["decoder"]
    bf16 = backends.open_session(path, graph="decode", backend="openvino", precision="bf16")
    got = _teacher_forced_logits(g, bf16, "Describe the image.", images, tokens[:-1])
    assert row_cosines(got, want).min() >= DECODER_BF16_MIN_COSINE
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= DECODER_BF16_MIN_TOP1
