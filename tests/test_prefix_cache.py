"""The page-prefix cache: a follow-up question on the same image(s) skips the vision tower
and the page's prefill, and still gives exactly transformers' greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402  (after importorskip: no torch, no test)

import colrag  # noqa: E402  (after importorskip: no torch, no test)
from colrag.vlm.prefix_cache import Prefix, PrefixCache  # noqa: E402  (after importorskip: no torch, no test)
from tests.test_generator import N_NEW, Reference, synthetic_image  # noqa: E402  (after importorskip: no torch, no test)

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references


@pytest.fixture(scope="module")
def reference(tiny_qwen2vl_checkpoint):
    return Reference(tiny_qwen2vl_checkpoint)


def _greedy(gen, question, images):
    return gen.generate(question, images=images, max_new_tokens=N_NEW, min_new_tokens=N_NEW)


@pytest.mark.parametrize("sizes", [[(260, 180, 11)], [(200, 150, 12), (120, 180, 13)]], ids=["one-image", "two-images"])
def test_follow_up_from_the_cache_equals_transformers(sizes, tiny_generator_bundle, reference):
    gen = colrag.Generator.load(tiny_generator_bundle, threads=1)
    images = [synthetic_image(w, h, s) for w, h, s in sizes]
    first = _greedy(gen, "What does this chart show?", images)
    assert not first.prefix_cached and first.vision_s > 0
    for question in ("And what is the title?", "この図は何を示していますか?"):
        follow = _greedy(gen, question, images)
        assert follow.prefix_cached and follow.vision_s == 0.0
        _, want = reference.generate(question, images)
        assert len(set(want)) >= 8
        assert follow.token_ids == want
    assert gen.prefix_cache.hits == 2 and gen.prefix_cache.misses == 1


def test_other_pixels_or_no_cache_mean_no_hit(tiny_generator_bundle):
    gen = colrag.Generator.load(tiny_generator_bundle, threads=1)
    a, b = synthetic_image(400, 300, 21), synthetic_image(400, 300, 22)
    gen.generate("Describe.", images=[a], max_new_tokens=2)
    assert not gen.generate("Describe.", images=[b], max_new_tokens=2).prefix_cached
    # a lower resolution is another preprocessing, so another prefix
    assert not gen.generate("Describe.", images=[a], max_new_tokens=2, max_pixels=64 * 28 * 28).prefix_cached
    assert gen.generate("Why?", images=[a], max_new_tokens=2).prefix_cached
    assert not gen.generate("Why?", max_new_tokens=2).prefix_cached  # text only: nothing to cache
    plain = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=False)
    plain.generate("Describe.", images=[a], max_new_tokens=2)
    assert plain.prefix_cache is None and not plain.generate("Why?", images=[a], max_new_tokens=2).prefix_cached


def test_disk_cache_serves_another_process_and_survives_damage(tiny_generator_bundle, reference, tmp_path):
    folder = tmp_path / "prefixes"
    images = [synthetic_image(220, 160, 31)]
    first = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=PrefixCache(folder=folder))
    first.generate("Describe the image.", images=images, max_new_tokens=2)
    (stored,) = list(folder.glob("*.npz"))
    assert not list(folder.glob(".tmp-*"))

    # a new Generator (as in the next `colrag ask`) finds it on disk
    second = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=PrefixCache(folder=folder))
    follow = _greedy(second, "What is the title?", images)
    assert follow.prefix_cached
    assert follow.token_ids == reference.generate("What is the title?", images)[1]

    # a damaged file is a miss (and is replaced), never a wrong answer
    stored.write_bytes(stored.read_bytes()[:1000])
    third = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=PrefixCache(folder=folder))
    again = _greedy(third, "What is the title?", images)
    assert not again.prefix_cached and again.token_ids == follow.token_ids
    assert stored.stat().st_size > 1000


def _prefix(n_tokens: int, value: float = 0.0) -> Prefix:
    return Prefix(
        np.arange(n_tokens, dtype=np.int64), [np.full((1, 2, n_tokens, 16), value, np.float32) for _ in range(4)]
    )


def test_cache_bounds_and_checks(tmp_path):
    one = _prefix(100).nbytes
    cache = PrefixCache(memory_bytes=2 * one, folder=tmp_path, disk_bytes=int(2.5 * one))
    shape = (4, 2, 16)
    for i in range(4):
        cache.put(f"k{i}", _prefix(100, float(i)))
    assert len(cache._memory) == 2  # the two most recent
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npz")) <= 2.5 * one
    assert not (tmp_path / "k0.npz").exists() and (tmp_path / "k3.npz").exists()

    fresh = PrefixCache(folder=tmp_path)
    hit = fresh.get("k3", np.arange(100), shape)
    assert hit is not None and float(hit.past[0][0, 0, 0, 0]) == 3.0
    assert fresh.get("k3", np.arange(1, 101), shape) is None  # other ids under the same key: refused
    assert (
        PrefixCache(folder=tmp_path).get("k3", np.arange(100), (6, 2, 16)) is None
    )  # other model shape: refused, dropped
    assert not (tmp_path / "k3.npz").exists()
    assert fresh.get("missing", np.arange(3), shape) is None


def test_unwritable_cache_folder_only_costs_speed(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = PrefixCache(folder=blocker / "prefixes")
    cache.put("k", _prefix(10))  # no exception
    assert cache.get("k", np.arange(10), (4, 2, 16)) is not None  # memory still serves it


def test_ask_follow_ups_use_the_cache(tiny_generator_bundle, tmp_path, monkeypatch):
    from colrag.cli import _register_commands, app

    _register_commands()
    img = tmp_path / "page.png"
    synthetic_image(240, 180, 41).save(img)
    base = ["ask", "--image", str(img), "--generator", str(tiny_generator_bundle), "--max-new-tokens", "6", "--stats"]
    first = CliRunner().invoke(app, [*base, "What is shown?"])
    assert first.exit_code == 0, first.output
    assert "from cache" not in first.stderr
    second = CliRunner().invoke(app, [*base, "What is the title?"])
    assert second.exit_code == 0 and "page prefix from cache" in second.stderr  # across runs, via the disk cache
    off = CliRunner().invoke(app, [*base, "--no-cache", "What is the title?"])
    assert off.exit_code == 0 and "from cache" not in off.stderr and off.stdout == second.stdout

    from colrag.vlm.chat import Conversation

    want = colrag.Generator.load(tiny_generator_bundle, prefix_cache=False)
    conversation, answers = Conversation(), []
    for q in ("What is shown?", "Why?", "Where?"):  # -i keeps the conversation in the prompt
        answers.append(want.generate(conversation.prompt(q), images=[img], max_new_tokens=6).text)
        conversation.add(q, answers[-1])
    session = CliRunner().invoke(
        app, [*base, "-i", "What is shown?"], input="Why?\n\nWhere?\n"
    )  # an empty line is skipped
    assert session.exit_code == 0, session.output  # the end of input (Ctrl-D) leaves
    assert session.stdout == "".join(a + "\n" for a in answers)
    assert session.stderr.count("page prefix from cache") == 3  # the page was already cached by the first run

    bad = CliRunner().invoke(app, [*base, "-i", "--json", "q"])
    assert bad.exit_code != 0 and "--interactive" in str(bad.exception)


def test_same_pixels_in_another_grid_is_another_prefix(tiny_generator_bundle):
    """Blank 896x448 and 448x896 pages have the same pixel bytes, not the same grid (hence other k/v)."""
    from PIL import Image

    wide, tall = Image.new("RGB", (896, 448), "white"), Image.new("RGB", (448, 896), "white")
    gen = colrag.Generator.load(tiny_generator_bundle, threads=1)
    pre_wide, pre_tall = gen._preprocess(wide, None), gen._preprocess(tall, None)
    assert pre_wide.pixel_values.tobytes() == pre_tall.pixel_values.tobytes()  # the trap: equal bytes
    assert list(pre_wide.grid_thw) != list(pre_tall.grid_thw)
    first = _greedy(gen, "What is shown?", [wide])
    second = _greedy(gen, "What is shown?", [tall])
    assert not first.prefix_cached and not second.prefix_cached
    plain = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=False)
    assert second.token_ids == _greedy(plain, "What is shown?", [tall]).token_ids
    assert first.token_ids == _greedy(plain, "What is shown?", [wide]).token_ids


def test_key_covers_every_setting_that_changes_the_prefix(tiny_generator_bundle, monkeypatch):
    from colrag.vlm.constants import SYSTEM_PROMPT

    gen = colrag.Generator.load(tiny_generator_bundle, threads=1)
    pres = [gen._preprocess(synthetic_image(120, 90, 5), None)]  # small: every budget below leaves its pixels alone
    ids = np.arange(12, dtype=np.int64)
    base = gen._prefix_key(ids, pres, None, SYSTEM_PROMPT)
    assert gen._prefix_key(ids.copy(), pres, None, SYSTEM_PROMPT) == base
    others = {
        "system prompt": gen._prefix_key(ids, pres, None, "You are a terse assistant."),
        "pixel budget": gen._prefix_key(ids, pres, 200 * 28 * 28, SYSTEM_PROMPT),
        "prefix ids": gen._prefix_key(ids[:-1], pres, None, SYSTEM_PROMPT),
    }
    with monkeypatch.context() as patch:
        bf16 = {"vision": "openvino bf16", "prefill": "openvino bf16", "decode": "onnxruntime f32"}
        patch.setattr(type(gen), "runtimes", property(lambda self: bf16))
        others["backend"] = gen._prefix_key(ids, pres, None, SYSTEM_PROMPT)
    gen.manifest = {**gen.manifest, "quantization": {"scheme": "int8"}}
    others["quantization"] = gen._prefix_key(ids, pres, None, SYSTEM_PROMPT)
    gen.bundle_id = "another-bundle"
    others["bundle"] = gen._prefix_key(ids, pres, None, SYSTEM_PROMPT)
    assert len({base, *others.values()}) == 1 + len(others), others


def _alter_stored_kv(path) -> None:
    """Rewrite a cache file keeping its format and checksum field but with one k/v number changed."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["past_0"] = arrays["past_0"].copy()
    arrays["past_0"][0, 0, 0, 0] += 1.0
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_altered_kv_on_disk_is_a_miss_with_a_warning(tmp_path, capsys):
    cache = PrefixCache(folder=tmp_path)
    cache.put("k", _prefix(20, 1.5))
    assert PrefixCache(folder=tmp_path).get("k", np.arange(20), (4, 2, 16)) is not None
    capsys.readouterr()
    _alter_stored_kv(tmp_path / "k.npz")
    assert PrefixCache(folder=tmp_path).get("k", np.arange(20), (4, 2, 16)) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum" in err and "k.npz" in err
    assert not (tmp_path / "k.npz").exists()
    # a file copied under another key is refused too (the key is inside the checksum)
    cache.put("a", _prefix(20, 2.0))
    (tmp_path / "a.npz").rename(tmp_path / "b.npz")
    assert PrefixCache(folder=tmp_path).get("b", np.arange(20), (4, 2, 16)) is None


def test_altered_kv_never_changes_the_answer(tiny_generator_bundle, tmp_path, capsys):
    folder = tmp_path / "prefixes"
    images = [synthetic_image(220, 160, 33)]
    colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=PrefixCache(folder=folder)).generate(
        "Describe the image.", images=images, max_new_tokens=2
    )
    (stored,) = list(folder.glob("*.npz"))
    with np.load(stored, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for name in arrays:
        if name.startswith("past_"):
            arrays[name] = (arrays[name] * 3.0 + 1.0).astype(np.float32)  # a very different prefix, same shapes
    with open(stored, "wb") as f:
        np.savez(f, **arrays)
    capsys.readouterr()
    gen = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=PrefixCache(folder=folder))
    answer = _greedy(gen, "What is the title?", images)
    assert not answer.prefix_cached
    assert "checksum" in capsys.readouterr().err
    plain = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=False)
    assert answer.token_ids == _greedy(plain, "What is the title?", images).token_ids


def test_answers_from_stored_features_never_load_the_vision_graph(tiny_generator_bundle):
    """The prefix cache's key names the runtimes; naming the vision graph's must not load it."""
    from colrag.vlm.image_features import ImageFeatures

    computer = colrag.Generator.load(tiny_generator_bundle, prefix_cache=False)
    embeds, grid = computer.image_features(synthetic_image(300, 200, 2))
    features = ImageFeatures(embeds, grid, computer.vision_hash)
    g = colrag.Generator.load(tiny_generator_bundle)  # with the prefix cache
    first = g.generate("Describe the image.", [features], max_new_tokens=4)
    again = g.generate("And the title?", [features], max_new_tokens=4)
    assert g._vision_session is None  # not loaded
    assert g.runtimes["vision"] == "onnxruntime f32"  # yet named
    assert not first.prefix_cached and again.prefix_cached
