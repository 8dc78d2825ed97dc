"""`ask` answers indexed pages from the page features the index stored (issue 11).

Tiny checkpoints whose generator shares the retriever's vision weights, an index of
some of the shared PDFs: `ask` takes the stored features (no rendering, no vision
tower) and its greedy tokens equal those of `ask --no-page-features` (render + vision
tower at the same pixel budget), for one and two pages and a Japanese question. With
another vision tower, damaged features or another pixel budget it computes, says so
once, and still answers the same.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

PDFS = ["01_chart_paper_tracemonkey.pdf", "03_chart_usda_ag_energy_roundup.pdf", "12_rotated90_nics_table.pdf"]
QUESTIONS = ["What does the chart show?", "この表の合計はいくつですか?"]


@pytest.fixture(scope="module")
def shared_index(pdf_dir, tiny_retriever_bundle, tmp_path_factory):
    """Three of the shared PDFs (16 pages) indexed with the tiny retriever, page features on."""
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo
    from colrag.vlm.retriever import Retriever

    root = tmp_path_factory.mktemp("features")
    docs = root / "docs"
    docs.mkdir()
    for name in PDFS:
        (docs / name).symlink_to(pdf_dir / name)  # the PDFs stay in ../shared
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    with Index.open_writer(root / "index", RetrieverInfo.of(model)) as idx:
        report = Indexer(idx, model).run([docs])
        stats = idx.stats()
    assert report.ok and report.pages == 16
    assert stats["pages_with_features"] == 16 and stats["feature_bytes_per_page"] > 0
    return root


def _copy(shared_index, tmp_path):
    shutil.copytree(shared_index / "index", tmp_path / "index")
    return tmp_path / "index"


def _ask(cli, index, retriever, generator, question, *extra):
    args = [
        "ask",
        question,
        "--index",
        str(index),
        "--retriever",
        str(retriever),
        "--generator",
        str(generator),
        "--max-new-tokens",
        "12",
        "--threads",
        "1",
        "--no-cache",
        "--json",
        *extra,
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("question", QUESTIONS, ids=["en", "ja"])
@pytest.mark.parametrize("pages", [1, 2])
def test_stored_features_give_the_tokens_of_the_fresh_path(
    question, pages, cli, shared_index, tiny_retriever_bundle, tiny_shared_generator_bundle
):
    from colrag.ask import Asker

    index = shared_index / "index"
    stored, err = _ask(cli, index, tiny_retriever_bundle, tiny_shared_generator_bundle, question, "--top-k", str(pages))
    assert [s["features"] for s in stored["sources"]] == ["index"] * pages
    assert "note:" not in err
    fresh, err = _ask(
        cli,
        index,
        tiny_retriever_bundle,
        tiny_shared_generator_bundle,
        question,
        "--top-k",
        str(pages),
        "--no-page-features",
    )
    assert [s["features"] for s in fresh["sources"]] == ["computed"] * pages
    assert "note:" not in err  # the user's own choice
    assert stored["answer"] == fresh["answer"] and stored["sources"] == [
        {**s, "features": "index"} for s in fresh["sources"]
    ]
    # --json says what each step ran on; stored features never load the vision tower
    assert stored["runtimes"]["vision"] is None and fresh["runtimes"]["vision"] is not None
    assert stored["runtimes"]["prefill"] == fresh["runtimes"]["prefill"] and stored["runtimes"]["decode"]

    # token for token, through the Python API
    runs = {}
    for use in (True, False):
        with Asker.open(
            index=index,
            retriever=tiny_retriever_bundle,
            generator=tiny_shared_generator_bundle,
            threads=1,
            cache=False,
            page_features=use,
        ) as asker:
            runs[use] = asker.ask(question, pages=pages, max_new_tokens=16)
    assert [s.features for s in runs[True].sources] == ["index"] * pages
    assert len(set(runs[False].token_ids)) >= 4
    assert runs[True].token_ids == runs[False].token_ids
    assert runs[True].n_prompt_tokens == runs[False].n_prompt_tokens


def test_another_vision_tower_computes_and_says_so(cli, shared_index, tiny_retriever_bundle, tiny_generator_bundle):
    got, err = _ask(cli, shared_index / "index", tiny_retriever_bundle, tiny_generator_bundle, QUESTIONS[0])
    assert got["sources"][0]["features"] == "computed"
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "vision tower differs" in notes[0]
    want, _ = _ask(
        cli, shared_index / "index", tiny_retriever_bundle, tiny_generator_bundle, QUESTIONS[0], "--no-page-features"
    )
    assert got["answer"] == want["answer"]


def test_a_pixel_budget_above_the_index_computes(
    cli, shared_index, tiny_retriever_bundle, tiny_shared_generator_bundle
):
    got, err = _ask(
        cli,
        shared_index / "index",
        tiny_retriever_bundle,
        tiny_shared_generator_bundle,
        QUESTIONS[0],
        "--max-pixels",
        str(1000 * 28 * 28),
    )
    assert got["sources"][0]["features"] == "computed" and "--max-pixels" in err


def test_damaged_features_fall_back_are_reported_and_repaired(
    cli, shared_index, tiny_retriever_bundle, tiny_shared_generator_bundle, tmp_path
):
    from colrag.store import Index
    from colrag.store.features import FEATURES_DIR, row_bytes

    index = _copy(shared_index, tmp_path)
    want, _ = _ask(cli, index, tiny_retriever_bundle, tiny_shared_generator_bundle, QUESTIONS[0])
    assert want["sources"][0]["features"] == "index"
    top = want["sources"][0]
    with Index.open(index) as idx:
        page = next(p for p in idx.snapshot().pages if p.path == top["file"] and p.page_no == top["page"])
        offset, n = idx.conn.execute(
            "SELECT row_offset, n_rows FROM page_features WHERE page_id = ?", (page.id,)
        ).fetchone()
        size = row_bytes(idx.manifest["page_features"]["encoding"], idx.manifest["page_features"]["hidden_size"])
    file = index / FEATURES_DIR / f"doc-{page.doc_id:08d}.feat"

    # flipped bytes in the top page's features: ask computes instead, says so once, answers the same
    original = file.read_bytes()
    data = bytearray(original)
    middle = (offset + n // 2) * size
    data[middle : middle + 64] = b"\x7f" * 64
    file.write_bytes(bytes(data))
    got, err = _ask(cli, index, tiny_retriever_bundle, tiny_shared_generator_bundle, QUESTIONS[0])
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and file.name in notes[0]
    assert got["answer"] == want["answer"]
    assert got["sources"][0]["features"] == "computed"
    status = CliRunner().invoke(cli, ["status", "--index", str(index), "--check"])
    assert status.exit_code == 1 and f"{FEATURES_DIR}/{file.name} is corrupt" in status.stdout

    # truncated: the next `colrag index` run repairs it
    file.write_bytes(original[: len(original) // 3])
    status = CliRunner().invoke(cli, ["status", "--index", str(index), "--check"])
    assert status.exit_code == 1 and "truncated" in status.stdout
    run = CliRunner().invoke(
        cli,
        [
            "index",
            str(shared_index / "docs"),
            "--index",
            str(index),
            "--retriever",
            str(tiny_retriever_bundle),
            "--threads",
            "1",
        ],
    )
    assert run.exit_code == 0, run.output
    assert "repair:" in run.stderr and file.name in run.stderr
    status = CliRunner().invoke(cli, ["status", "--index", str(index), "--json", "--check"])
    stats = json.loads(status.stdout)
    assert stats["index"]["pages_with_features"] == stats["index"]["pages"] == 16 and stats["check"]["ok"], stats[
        "check"
    ]
    got, err = _ask(cli, index, tiny_retriever_bundle, tiny_shared_generator_bundle, QUESTIONS[0])
    assert got == {**want, "timings": got["timings"]} and "note:" not in err


def test_removing_a_document_removes_its_features(cli, shared_index, tmp_path):
    from colrag.store.features import FEATURES_DIR

    index = _copy(shared_index, tmp_path)
    before = json.loads(CliRunner().invoke(cli, ["status", "--index", str(index), "--json"]).stdout)
    files = sorted((index / FEATURES_DIR).iterdir())
    assert len(files) == 3
    result = CliRunner().invoke(cli, ["remove", str(shared_index / "docs" / PDFS[0]), "--index", str(index)])
    assert result.exit_code == 0, result.output
    after = json.loads(CliRunner().invoke(cli, ["status", "--index", str(index), "--json"]).stdout)
    after, before = after["index"], before["index"]
    assert after["pages_with_features"] == before["pages_with_features"] - 14
    assert after["feature_bytes"] < before["feature_bytes"] and len(list((index / FEATURES_DIR).iterdir())) == 2
    assert after["bytes_on_disk"] < before["bytes_on_disk"]
    check = CliRunner().invoke(cli, ["status", "--index", str(index), "--check"])
    assert check.exit_code == 0, check.output


def test_ask_uses_a_running_server(cli, shared_index, tiny_retriever_bundle, tiny_shared_generator_bundle, tmp_path):
    import threading

    from colrag.ask import Asker
    from colrag.serve import serve, socket_path

    asker = Asker.open(
        retriever=tiny_retriever_bundle, generator=tiny_shared_generator_bundle, threads=1, keep_retriever=True
    )
    stop = threading.Event()
    logs: list[str] = []
    thread = threading.Thread(
        target=serve,
        args=(asker, tiny_retriever_bundle, tiny_shared_generator_bundle, 1),
        kwargs={"log": logs.append, "stop": stop},
        daemon=True,
    )
    thread.start()
    try:
        for _ in range(100):
            if socket_path().exists():
                break
            threading.Event().wait(0.05)
        index = shared_index / "index"
        local, _ = _ask(
            cli, index, tiny_retriever_bundle, tiny_shared_generator_bundle, QUESTIONS[1], "--top-k", "2", "--no-server"
        )
        args = [
            "ask",
            QUESTIONS[1],
            "--index",
            str(index),
            "--retriever",
            str(tiny_retriever_bundle),
            "--generator",
            str(tiny_shared_generator_bundle),
            "--max-new-tokens",
            "12",
            "--threads",
            "1",
            "--top-k",
            "2",
            "--stats",
        ]
        served = CliRunner().invoke(cli, [*args, "--json"])
        assert served.exit_code == 0, served.output
        assert "answered by colrag serve" in served.stderr
        got = json.loads(served.stdout)
        assert got["answer"] == local["answer"] and [s["features"] for s in got["sources"]] == ["index", "index"]
        streamed = CliRunner().invoke(cli, args)  # a follow-up: the page prefix is in the server's cache
        assert streamed.exit_code == 0 and streamed.stdout.strip().startswith(local["answer"])
        assert "answered by colrag serve" in streamed.stderr and "page prefix from cache" in streamed.stderr
        other_args = ["2" if i and args[i - 1] == "--threads" else a for i, a in enumerate(args)]
        other = CliRunner().invoke(cli, other_args)  # other --threads: answered here, not by the server
        assert other.exit_code == 0 and "answered by colrag serve" not in other.stderr
        assert "not used" in other.stderr
        bad = CliRunner().invoke(
            cli,
            [
                "ask",
                "q",
                "--index",
                str(tmp_path / "none"),
                "--retriever",
                str(tiny_retriever_bundle),
                "--generator",
                str(tiny_shared_generator_bundle),
                "--threads",
                "1",
            ],
        )
        assert bad.exit_code != 0 and "colrag index" in str(bad.exception)  # the server's error, one line
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not socket_path().exists()
