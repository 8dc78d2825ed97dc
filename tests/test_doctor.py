"""`colrag doctor`: one line per check, FAIL with a fix for missing or damaged models and indexes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from colrag.cli import _register_commands, app
from colrag.doctor import FAIL, OK, WARN, run_checks
from tests.index_helpers import FakeRetriever, make_pdf


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COLRAG_HOME", str(tmp_path / "home"))
    for var in ("COLRAG_MODELS", "COLRAG_INDEX", "COLRAG_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def doctor(*args: str):
    _register_commands()
    return CliRunner().invoke(app, ["doctor", *args])


def line_of(stdout: str, name: str) -> str:
    [line] = [row for row in stdout.splitlines() if row.split()[1:2] == [name]]
    return line


def test_missing_models_fail_and_name_the_install_command(home):
    result = doctor()
    assert result.exit_code == 1
    for part in ("retriever", "generator"):
        line = line_of(result.stdout, part)
        assert line.startswith("FAIL") and f"colrag models install --only {part}" in line
    assert line_of(result.stdout, "python").startswith("ok")
    assert line_of(result.stdout, "onnxruntime").startswith("ok")
    assert line_of(result.stdout, "index").startswith("warn") and "colrag index DIR" in line_of(result.stdout, "index")


def test_healthy_retriever_is_ok(home, tiny_retriever_bundle):
    shutil.copytree(tiny_retriever_bundle, home / "models" / "retriever")
    result = doctor("--full")
    line = line_of(result.stdout, "retriever")
    assert line.startswith("ok") and "checksums verified" in line
    assert result.exit_code == 1  # the generator is still missing
    assert line_of(result.stdout, "generator").startswith("FAIL")


def test_truncated_bundle_file_fails_naming_it(home, tiny_retriever_bundle):
    bundle = home / "models" / "retriever"
    shutil.copytree(tiny_retriever_bundle, bundle)
    victim = max((p for p in bundle.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    result = doctor()
    line = line_of(result.stdout, "retriever")
    assert result.exit_code == 1
    assert line.startswith("FAIL") and victim.name in line and "truncated" in line and "--reinstall" in line


def test_modified_bundle_file_fails_only_with_full(home, tiny_retriever_bundle):
    bundle = home / "models" / "retriever"
    shutil.copytree(tiny_retriever_bundle, bundle)
    victim = bundle / "tokenizer.json"
    data = bytearray(victim.read_bytes())
    data[-2] ^= 1  # same size, different content
    victim.write_bytes(bytes(data))
    assert line_of(doctor().stdout, "retriever").startswith("ok")
    line = line_of(doctor("--full").stdout, "retriever")
    assert line.startswith("FAIL") and "tokenizer.json" in line and "checksum" in line


def test_generator_sharing_a_missing_retriever_fails(home, tiny_shared_generator_bundle, tiny_retriever_bundle):
    gen = home / "models" / "generator"
    shutil.copytree(tiny_shared_generator_bundle, gen)
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["shared_vision"]["bundle"] = "../retriever"  # as `colrag models install` lays the two out
    (gen / "manifest.json").write_text(json.dumps(manifest))
    line = line_of(doctor().stdout, "generator")
    assert line.startswith("FAIL") and "shares the vision tower" in line
    shutil.copytree(tiny_retriever_bundle, home / "models" / "retriever")
    result = doctor("--full")
    assert line_of(result.stdout, "generator").startswith("ok")
    assert line_of(result.stdout, "retriever").startswith("ok")


def _build_index(path: Path, docs: Path, retriever) -> None:
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo

    with Index.open_writer(path, RetrieverInfo.of(retriever)) as index:
        Indexer(index, retriever).run([docs])


def test_index_ok_damaged_and_from_another_retriever(home, tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, "a")
    path = home / "indexes" / "default"
    _build_index(path, docs, FakeRetriever())
    check = {c.name: c for c in run_checks()}["index"]
    assert check.status == OK and "1 documents, 2 pages" in check.detail
    # a retriever bundle that is not the one the index was built with
    from colrag import doctor as doctor_mod

    mismatch = doctor_mod.check_index(path, {"files": {"x": {"sha256": "0" * 64}}}, full=False)
    assert mismatch.status == FAIL and "another retriever" in mismatch.detail
    # cut every vector file short: the catalog no longer matches the vectors
    for file in (path / "vectors").iterdir():
        with open(file, "r+b") as f:
            f.truncate(file.stat().st_size // 2)
    result = doctor()
    line = line_of(result.stdout, "index")
    assert result.exit_code == 1 and line.startswith("FAIL") and "damaged" in line and "colrag index DIR" in line


def test_index_option_and_json(home, tmp_path):
    result = doctor("--index", str(tmp_path), "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["index"]["status"] == FAIL and "not a colrag index" in rows["index"]["detail"]
    assert rows["disk"]["status"] in (OK, WARN)
    assert result.exit_code == 1


def test_low_disk_warns(home, monkeypatch):
    from colrag import install

    monkeypatch.setattr(install, "free_bytes", lambda p: 10**8)
    check = {c.name: c for c in run_checks()}["disk"]
    assert check.status == WARN and "0.1 GB free" in check.detail and check.fix


def test_unreadable_catalog_fails_with_a_rebuild_hint(home, tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1, "a")
    path = home / "indexes" / "default"
    _build_index(path, docs, FakeRetriever())
    for file in path.iterdir():
        if file.name.startswith("catalog"):
            file.write_bytes(b"not a database" * 100)
    check = {c.name: c for c in run_checks()}["index"]
    assert check.status == FAIL and "cannot be read" in check.detail and "colrag index DIR" in check.fix


def test_faiss_is_checked_by_using_it(home, monkeypatch):
    """doctor's faiss line is ok only when FAISS loads and does the index's work (SQ8 vectors, k-means, page lists)."""
    check = {c.name: c for c in run_checks()}["faiss"]
    assert check.status == OK and "k-means" in check.detail
    from colrag.errors import IndexStoreError
    from colrag.store import faiss_io

    def missing():
        raise IndexStoreError("faiss is not installed (it stores and searches the vectors): pip install faiss-cpu")

    monkeypatch.setattr(faiss_io, "faiss_module", missing)
    check = {c.name: c for c in run_checks()}["faiss"]
    assert check.status == FAIL and "faiss" in check.detail
    monkeypatch.undo()
    from colrag.store import coarse

    monkeypatch.setattr(coarse, "assign", lambda quantizer, x: np.zeros(len(x), dtype=np.int64))  # a broken assignment
    check = {c.name: c for c in run_checks()}["faiss"]
    assert check.status == FAIL and "wrong centroids" in check.detail
