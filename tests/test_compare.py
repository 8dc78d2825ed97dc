"""`colrag models compare`: drift between two bundles of one model, measured on the user's own pages."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.test_cli import colrag
from tests.test_generator import synthetic_image

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references


def compare(*args) -> dict:
    result = colrag("models", "compare", *map(str, args), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pages_are_taken_in_turn_from_each_readable_pdf(pdf_dir):
    from colrag.compare import sample_pages

    warnings = []
    pages = sample_pages([pdf_dir], 6, 200_000, warn=warnings.append)
    documents = [p.label.rsplit(" p", 1)[0] for p in pages]
    assert len(pages) == 6 and len(set(documents)) == 6  # one page of each of six documents before any second page
    assert all(p.label.endswith(" p1") for p in pages)
    assert all(p.image.width * p.image.height <= 1.1 * 200_000 for p in pages)
    assert any("14_encrypted_user_password.pdf" in w and "password" in w for w in warnings)
    assert any("18_zero_bytes.pdf" in w for w in warnings)


def test_retriever_int8_against_fp32(pdf_dir, tiny_retriever_bundle, tiny_retriever_int8_bundle):
    pdfs = [pdf_dir / "03_chart_usda_ag_energy_roundup.pdf", pdf_dir / "06_slides_ja_nlp2004.pdf"]
    drift = compare(tiny_retriever_bundle, tiny_retriever_int8_bundle, *pdfs, "--pages", 3, "-q", "言語処理")
    assert drift["kind"] == "retriever" and drift["pages"] == 3 and drift["queries"] == 1
    assert 0.99 <= drift["page_cosine_mean"] < 0.999999  # int8 is close, but not the same model
    assert drift["page_cosine_min"] <= drift["page_cosine_mean"]
    assert 0.99 <= drift["query_cosine_mean"] < 0.999999
    # this query's best page leads by 5 % in score (an "energy" query's two best pages sit within 0.04 %
    # on the tiny random model, and int8 swaps them: the comparison reports such swaps as they are)
    assert drift["top1_agreement"] == 1.0 and drift["top_k"] == 3 and drift["disagreements"] == []


def test_a_swap_of_near_tied_pages_is_reported_with_its_gap(monkeypatch):
    from colrag import compare as cmp

    page = np.zeros((2, 4), np.float32)
    page[:, 0] = 1
    tilted = page.copy()
    tilted[:, 1] = 0.01
    tilted /= np.linalg.norm(tilted, axis=1, keepdims=True)  # unit rows a hair less aligned with the query
    query = np.array([[1, 0, 0, 0]], np.float32)
    vectors = {"A": ([page, tilted], [query]), "B": ([tilted, page], [query])}  # B swaps the two pages
    monkeypatch.setattr(cmp, "_embed_all", lambda bundle, *args: vectors[bundle])
    pages = [cmp.Page("a.pdf p1", None), cmp.Page("a.pdf p2", None)]
    drift = cmp.compare_retrievers("A", "B", pages, ["q"], top_k=1)
    assert drift.top1_agreement == 0.0 and drift.top_k_overlap == 0.0
    assert drift.page_cosine_min < 1 and drift.query_cosine_min == pytest.approx(1)
    [swap] = drift.disagreements
    assert swap["query"] == "q" and swap["page_a"] == "a.pdf p1" and swap["page_b"] == "a.pdf p2"
    assert swap["gap"] == pytest.approx(1 - 1 / np.sqrt(1 + 0.01**2), rel=1e-3)


def test_a_retriever_compared_with_itself_does_not_drift(pdf_dir, tiny_retriever_bundle):
    drift = compare(
        tiny_retriever_bundle, tiny_retriever_bundle, pdf_dir / "01_chart_paper_tracemonkey.pdf", "--pages", 2
    )
    assert drift["queries"] == 6  # the default queries
    assert drift["page_cosine_min"] > 1 - 1e-6 and drift["query_cosine_min"] > 1 - 1e-6
    assert drift["top1_agreement"] == 1.0 and drift["top_k_overlap"] == 1.0


def test_generator_answers_compared_token_by_token(tmp_path, tiny_generator_bundle, tiny_shared_generator_bundle):
    image = tmp_path / "photo.png"
    synthetic_image(120, 90, seed=3).save(image)
    same = compare(tiny_generator_bundle, tiny_generator_bundle, image, "--max-new-tokens", 8)
    assert same["kind"] == "generator" and same["identical"] == 1 and same["token_agreement"] == 1.0
    answer = same["answers"][0]
    assert answer["page"] == "photo.png" and answer["question"] == "What does this page show?"
    assert answer["first_difference"] is None and answer["equal_positions"] == answer["tokens"] >= 1

    # A generator with other weights: the comparison must see the answers part.
    other = compare(
        tiny_generator_bundle, tiny_shared_generator_bundle, image, "--max-new-tokens", 8, "-q", "Describe it."
    )
    answer = other["answers"][0]
    assert other["identical"] == 0 and answer["first_difference"] is not None
    assert answer["answer_a"] != answer["answer_b"] and other["token_agreement"] < 1.0


def test_bundles_of_different_kinds_are_refused_in_one_line(tmp_path, tiny_retriever_bundle, tiny_generator_bundle):
    image = tmp_path / "photo.png"
    synthetic_image(64, 64, seed=1).save(image)
    result = colrag("models", "compare", str(tiny_retriever_bundle), str(tiny_generator_bundle), str(image))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "cannot compare" in result.stderr
    assert "Traceback" not in result.stderr
