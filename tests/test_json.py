"""docs/JSON.md is the contract of every --json document: each command's output is checked
against the documented example, key for key and type for type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.index_helpers import SHARED_PDFS, make_pdf

DOC = Path(__file__).resolve().parents[1] / "docs" / "JSON.md"


def documented() -> dict[str, tuple[dict, set[str]]]:
    """{command: (example document, optional keys)} from docs/JSON.md."""
    text = DOC.read_text(encoding="utf-8")
    out = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = re.match(r"`colrag (\w+) --json`", section)
        if not title:
            continue
        block = re.search(r"```json\n(.*?)```", section, re.S)
        assert block, f"no JSON example for {title.group(1)}"
        optional = re.search(r"^Optional keys: (.*)$", section, re.M)
        keys = set(re.findall(r"`(\w+)`", optional.group(1))) if optional else set()
        out[title.group(1)] = (json.loads(block.group(1)), keys)
    return out


def conforms(actual, doc, optional: set[str], where: str = "$") -> None:
    """`actual` has the shape of the documented example `doc` (null matches any type)."""
    if actual is None or doc is None:
        return
    if isinstance(doc, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        missing = set(doc) - set(actual) - optional
        extra = set(actual) - set(doc)
        assert not missing and not extra, f"{where}: missing {sorted(missing)}, undocumented {sorted(extra)}"
        for k in actual:
            conforms(actual[k], doc[k], optional, f"{where}.{k}")
    elif isinstance(doc, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        if doc:
            for i, item in enumerate(actual):
                conforms(item, doc[0], optional, f"{where}[{i}]")
    elif isinstance(doc, bool):
        assert isinstance(actual, bool), f"{where}: expected a boolean, got {actual!r}"
    elif isinstance(doc, (int, float)):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), (
            f"{where}: expected a number, got {actual!r}"
        )
    else:
        assert isinstance(actual, type(doc)), f"{where}: expected {type(doc).__name__}, got {actual!r}"


def test_the_document_covers_every_json_command():
    docs = documented()
    assert set(docs) == {"index", "status", "search", "ask", "eval", "compact"}
    for command, (example, _) in docs.items():
        assert example["schema"] == 1 and example["command"] == command


def test_the_checker_catches_a_difference():
    doc = {"a": 1, "b": [{"file": "x", "page": 1}], "c": None}
    conforms({"a": 2.5, "b": [], "c": "anything"}, doc, set())
    for bad in ({"a": 1, "b": [{"file": "x"}], "c": 1}, {"a": "1", "b": [], "c": 1}, {"a": 1, "b": [], "c": 1, "d": 0}):
        with pytest.raises(AssertionError):
            conforms(bad, doc, set())


def _cli(*args):
    from typer.testing import CliRunner

    from colrag.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def indexed(tiny_retriever_bundle, tmp_path_factory):
    """An index with good pages, a broken file and (with ../shared) a page that renders with a warning."""
    root = tmp_path_factory.mktemp("json")
    docs = root / "docs"
    make_pdf(docs / "report.pdf", 2, "report")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\nnot really" * 20)
    if SHARED_PDFS.is_dir():
        (docs / "flate.pdf").write_bytes((SHARED_PDFS / "15_corrupt_flate_stream.pdf").read_bytes())
    r = _cli("index", docs, "--index", root / "ix", "--retriever", tiny_retriever_bundle, "--json")
    return root, docs, r


def test_index_status_search_match_the_document(indexed, tiny_retriever_bundle):
    docs_json = documented()
    root, _, r = indexed
    report = json.loads(r.stdout)
    assert report["failures"] and (report["warnings"] or not SHARED_PDFS.is_dir())
    if report["warnings"]:  # a page rendered with mupdf errors: the user is told content may be missing
        assert "flate.pdf page 1 rendered with errors, content may be missing: " in r.stderr
    conforms(report, *docs_json["index"])

    status = json.loads(_cli("status", "--index", root / "ix", "--json", "--check").stdout)
    assert status["failures"] and "check" in status
    conforms(status, *docs_json["status"])
    conforms(json.loads(_cli("status", "--index", root / "ix", "--json").stdout), *docs_json["status"])

    search = json.loads(
        _cli("search", "report", "--index", root / "ix", "--retriever", tiny_retriever_bundle, "--json").stdout
    )
    assert search["results"]
    conforms(search, *docs_json["search"])


def test_compact_matches_the_document(tmp_path):
    """`colrag compact --json` (it once crashed with a NameError): one document, the bytes it reclaimed."""
    import colrag
    from tests.index_helpers import clustered_rows

    ix = colrag.open_index(tmp_path / "ix", create=True, dim=128)
    for k in range(10):  # one file of ten removed: below the automatic compaction's share of dead rows
        for page in (1, 2):
            ix.add_page(f"f{k}.pdf", page, clustered_rows(40, seed=10 * k + page))
    ix.commit()
    ix.remove_file("f3.pdf")
    ix.commit()
    ix.close()
    r = _cli("compact", "--index", tmp_path / "ix", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    conforms(doc, *documented()["compact"])
    assert doc["index"]["path"] == str((tmp_path / "ix").resolve())
    assert doc["vector_bytes_before"] - doc["vector_bytes_after"] == 2 * 40 * 128  # f3.pdf's two pages
    again = json.loads(_cli("compact", "--index", tmp_path / "ix", "--json").stdout)
    assert again["vector_bytes_before"] == again["vector_bytes_after"] == doc["vector_bytes_after"]


def test_eval_matches_the_document(tiny_retriever_bundle, tmp_path):
    from tests.test_eval import write_dataset

    pdf = make_pdf(tmp_path / "src" / "a.pdf", 2, "a")
    ds = write_dataset(tmp_path / "ds", {"a.pdf": pdf}, [{"_id": "q1", "text": "page one"}], ["q1\ta.pdf#1\t1"])
    args = ("eval", ds, "--retriever", tiny_retriever_bundle, "--temporary", "--json")
    conforms(json.loads(_cli(*args).stdout), *documented()["eval"])
    both = json.loads(_cli(*args, "--compare", tiny_retriever_bundle).stdout)
    assert "delta" in both and "rank_changes" in both
    conforms(both, *documented()["eval"])


def test_ask_matches_the_document(indexed, tiny_retriever_bundle, request):
    pytest.importorskip("transformers")
    generator = request.getfixturevalue("tiny_generator_bundle")
    root, _, _ = indexed
    out = _cli(
        "ask",
        "What is on the page?",
        "--index",
        root / "ix",
        "--retriever",
        tiny_retriever_bundle,
        "--generator",
        generator,
        "--max-new-tokens",
        "3",
        "--max-pixels",
        str(64 * 28 * 28),
        "--json",
    ).stdout
    answer = json.loads(out)
    assert answer["sources"]
    conforms(answer, *documented()["ask"])
