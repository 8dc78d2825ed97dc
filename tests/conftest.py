"""Shared fixtures: the tiny retriever checkpoint and its exported bundle, built once per session."""

from __future__ import annotations

import pytest

from tests.tiny_models import PDF_DIR, SHARED, TOKENIZER_DIR

# The tiny generator checkpoints and bundles, shared by every test module that names them.
pytest_plugins = ["tests.generator_fixtures"]


@pytest.fixture(autouse=True)
def _own_colrag_home(tmp_path, monkeypatch):
    """Every test gets its own COLRAG_HOME: nothing lands in the checkout or the user's data dir."""
    monkeypatch.setenv("COLRAG_HOME", str(tmp_path / "colrag-home"))


@pytest.fixture(autouse=True, scope="session")
def _onnxruntime_backend():
    """Tests run the graphs on onnxruntime (the parity tests' 1e-4 bounds are f32 onnxruntime's),
    whatever is installed; tests/test_backends.py runs OpenVINO explicitly against it.
    Session-scoped, so that module- and session-scoped model fixtures see it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLRAG_BACKEND", "onnxruntime")
        mp.delenv("COLRAG_PRECISION", raising=False)
        yield


# Fixtures that build a tiny checkpoint with torch or export one: a test that names one (directly
# or through another fixture) is marked `slow`, like the modules that import torch themselves
# (`pytestmark`). `pytest -m "not slow"` runs the rest in about a minute (README).
TORCH_FIXTURES = frozenset(
    {
        "tiny_colqwen2_checkpoint",
        "tiny_retriever_bundle",
        "tiny_retriever_int8_bundle",
        "tiny_qwen2vl_checkpoint",
        "tiny_generator_bundle",
        "tiny_qwen2vl_shared_checkpoint",
        "tiny_shared_generator_bundle",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TORCH_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def require_shared() -> None:
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"{SHARED} is absent: the real tokenizer and PDFs live there")


@pytest.fixture(scope="session")
def tokenizer_dir():
    require_shared()
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def pdf_dir():
    if not PDF_DIR.is_dir():
        pytest.skip(f"{PDF_DIR} is absent")
    return PDF_DIR


@pytest.fixture(scope="session")
def tiny_colqwen2_checkpoint(tmp_path_factory):
    """A tiny random ColQwen2 checkpoint folder, laid out like a downloaded one."""
    require_shared()
    pytest.importorskip("transformers")
    from tests.tiny_models import build_tiny_colqwen2

    return build_tiny_colqwen2(tmp_path_factory.mktemp("ckpt") / "tiny-colqwen2")


@pytest.fixture(scope="session")
def tiny_retriever_bundle(tiny_colqwen2_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported by colrag's own exporter."""
    from colrag.export.retriever import export_retriever

    out = tmp_path_factory.mktemp("bundles") / "retriever"
    export_retriever(tiny_colqwen2_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def tiny_retriever_int8_bundle(tiny_retriever_bundle, tmp_path_factory):
    """The tiny fp32 bundle quantized to int8 (the export's own quantize step, no second export)."""
    from colrag.export import quantize_bundle

    out = tmp_path_factory.mktemp("bundles") / "retriever-int8"
    quantize_bundle(tiny_retriever_bundle, out, "int8")
    return out


@pytest.fixture(scope="session")
def cli():
    """The typer app with every command registered (for CliRunner)."""
    from colrag.cli import _register_commands, app

    _register_commands()
    return app


@pytest.fixture(scope="session")
def tiny_index(tiny_retriever_bundle, tmp_path_factory):
    """Two small PDFs indexed with the tiny retriever."""
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo
    from colrag.vlm.retriever import Retriever
    from tests.index_helpers import make_pdf

    root = tmp_path_factory.mktemp("ask")
    docs = root / "docs"
    make_pdf(docs / "alpha.pdf", n_pages=2, tag="alpha", size=(300, 400))
    make_pdf(docs / "beta.pdf", n_pages=1, tag="beta", size=(400, 300))
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    with Index.open_writer(root / "index", RetrieverInfo.of(model)) as idx:
        report = Indexer(idx, model).run([docs])
    assert report.ok and report.pages == 3
    return root / "index"
