"""Model bundles: a corrupted file of the right size never loads; manifests are checked
against a schema; later loads stay fast thanks to verified stamps (colrag.vlm.verified)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import colrag
from colrag.errors import BundleError
from colrag.vlm.bundle import MANIFEST, load_manifest, write_manifest
from tests.cli_helpers import run_colrag as _colrag
from tests.index_helpers import make_pdf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle_copy(tiny_retriever_bundle, tmp_path):
    dst = tmp_path / "retriever"
    shutil.copytree(tiny_retriever_bundle, dst)
    return dst


def _flip_a_byte(path: Path, keep_times: bool = False) -> None:
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(raw))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -r` would do


def _hashed_files(monkeypatch) -> list[str]:
    import colrag.vlm.verified

    seen: list[str] = []
    real = colrag.vlm.verified.sha256_file

    def counting(path, *args, **kw):
        seen.append(Path(path).name)
        return real(path, *args, **kw)

    monkeypatch.setattr(colrag.vlm.verified, "sha256_file", counting)
    return seen


def test_corrupt_file_of_the_right_size_is_refused_on_first_load(bundle_copy):
    _flip_a_byte(bundle_copy / "vision.onnx.data")
    with pytest.raises(BundleError, match=r"vision\.onnx\.data does not match its checksum"):
        colrag.Retriever.load(bundle_copy, threads=1)


def test_second_load_trusts_the_stamp_and_a_later_change_is_caught(bundle_copy, monkeypatch, tmp_path):
    before = sorted(p.name for p in bundle_copy.rglob("*"))
    hashed = _hashed_files(monkeypatch)
    colrag.Retriever.load(bundle_copy, threads=1)
    assert set(hashed) >= {"vision.onnx.data", "text.onnx.data", "embed_tokens.npy", MANIFEST}
    hashed.clear()
    colrag.Retriever.load(bundle_copy, threads=1)
    assert hashed == [MANIFEST]  # only the small manifest: the model files are known unchanged
    assert sorted(p.name for p in bundle_copy.rglob("*")) == before  # the stamp lives under COLRAG_HOME
    assert list((tmp_path / "colrag-home" / "cache" / "verified").glob("*.json"))

    # a copy elsewhere (other path, other inodes) is verified again
    other = shutil.copytree(bundle_copy, tmp_path / "elsewhere")
    colrag.Retriever.load(other, threads=1)
    assert "vision.onnx.data" in hashed

    # modified after it was verified, its mtime put back: the inode's ctime still tells
    _flip_a_byte(bundle_copy / "text.onnx.data", keep_times=True)
    with pytest.raises(BundleError, match=r"text\.onnx\.data does not match its checksum"):
        colrag.Retriever.load(bundle_copy, threads=1)


def test_unwritable_stamp_folder_only_costs_speed(bundle_copy, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("COLRAG_HOME", str(blocker))
    hashed = _hashed_files(monkeypatch)
    colrag.Retriever.load(bundle_copy, threads=1)
    colrag.Retriever.load(bundle_copy, threads=1)
    assert hashed.count("vision.onnx.data") == 2


def test_index_refuses_a_retriever_whose_verified_identity_differs(tiny_retriever_bundle, tmp_path):
    home = tmp_path / "home"
    docs, ix = tmp_path / "docs", tmp_path / "ix"
    make_pdf(docs / "a.pdf", 1)
    good = tmp_path / "good"
    shutil.copytree(tiny_retriever_bundle, good)
    r = _colrag("index", docs, "--index", ix, "--retriever", good, "--threads", "1", home=home)
    assert r.returncode == 0, r.stderr

    # same manifest, one flipped byte in the weights: it must not rank a single page
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_retriever_bundle, corrupt)
    _flip_a_byte(corrupt / "text.onnx.data")
    r = _colrag("search", "report", "--index", ix, "--retriever", corrupt, home=home)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "text.onnx.data does not match its checksum" in r.stderr

    # the weights changed and the manifest re-written to match: another identity, refused by the index
    manifest = load_manifest(corrupt)
    write_manifest(corrupt, "retriever", {k: v for k, v in manifest.items() if k not in ("format", "kind", "files")})
    r = _colrag("search", "report", "--index", ix, "--retriever", corrupt, home=home)
    assert r.returncode == 1 and "built with retriever" in r.stderr


# -- manifest schema --------------------------------------------------------------------


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


BROKEN_MANIFESTS = {
    "no graphs": (lambda m: m.pop("graphs"), "`graphs` is missing"),
    "dim is text": (lambda m: m.update(dim="x"), "`dim` must be a non-negative integer, got 'x'"),
    "null file entry": (lambda m: m["files"].update({"text.onnx": None}), "must be an object, got None"),
    "files is a list": (lambda m: m.update(files=[]), "`files` must be a non-empty object"),
    "size is text": (lambda m: m["files"]["text.onnx"].update(size="12"), "size` must be a non-negative integer"),
    "bad sha256": (lambda m: m["files"]["text.onnx"].update(sha256="abc"), "not a sha256 hex digest"),
    "graph not listed": (lambda m: m["graphs"].update(text="other.onnx"), "`graphs.text` must name a file listed"),
    "graph missing": (lambda m: m["graphs"].pop("vision"), "`graphs.vision` is missing"),
    "prompts missing": (lambda m: m.pop("prompts"), "`prompts` is missing"),
    "prompt not text": (lambda m: m["prompts"].update(page=3), "`prompts.page` must be a non-empty string"),
    "bool as int": (lambda m: m.update(max_pixels=True), "`max_pixels` must be a non-negative integer"),
    "path escapes": (lambda m: m["files"].update({"../x": {"size": 1, "sha256": "0" * 64}}), "invalid path"),
}


@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
def test_malformed_manifest_is_one_line(bundle_copy, case):
    edit, message = BROKEN_MANIFESTS[case]
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError) as info:
        colrag.Retriever.load(bundle_copy, threads=1)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_malformed_manifest_on_the_command_line(bundle_copy, tmp_path):
    _edit_manifest(bundle_copy, lambda m: m.update(dim="x"))
    ix = tmp_path / "ix"
    make_pdf(tmp_path / "docs" / "a.pdf", 1)
    r = _colrag("index", tmp_path / "docs", "--index", ix, "--retriever", bundle_copy, home=tmp_path / "home")
    assert r.returncode == 1 and r.stderr.startswith("error: malformed") and r.stderr.count("\n") == 1
    r = _colrag("models", "verify", bundle_copy, home=tmp_path / "home")
    assert r.returncode == 1 and "`dim` must be a non-negative integer" in r.stdout and "Traceback" not in r.stderr


def test_generator_manifest_schema(tiny_generator_bundle, tmp_path):
    gen = tmp_path / "generator"
    shutil.copytree(tiny_generator_bundle, gen)
    colrag.Generator.load(gen, threads=1, prefix_cache=False)  # intact: loads
    heads = load_manifest(gen)["num_kv_heads"]
    _edit_manifest(gen, lambda m: m.update(num_kv_heads=None))
    with pytest.raises(BundleError, match="`num_kv_heads` must be a non-negative integer"):
        colrag.Generator.load(gen, threads=1)
    _edit_manifest(gen, lambda m: (m.update(num_kv_heads=heads), m.update(eos_token_ids=["<|im_end|>"])))
    with pytest.raises(BundleError, match="`eos_token_ids` must list non-negative integers"):
        colrag.Generator.load(gen, threads=1)
