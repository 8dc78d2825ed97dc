"""`ask`: --top-k means pages, sampling options named as such, and `ask -i` as a conversation
(history in the prompt, /new, /pages, sources once, Ctrl-C stops one answer, Ctrl-D leaves)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner

from tests.tiny_models import SMALL

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references


def _base(tiny_index, tiny_retriever_bundle, tiny_generator_bundle):
    return [
        "--index",
        str(tiny_index),
        "--retriever",
        str(tiny_retriever_bundle),
        "--generator",
        str(tiny_generator_bundle),
        "--max-new-tokens",
        "4",
        "--max-pixels",
        SMALL,
        "--threads",
        "1",
        "--no-server",
    ]


def test_top_k_means_pages(cli, tiny_index, tiny_retriever_bundle, tiny_generator_bundle):
    base = _base(tiny_index, tiny_retriever_bundle, tiny_generator_bundle)
    r = CliRunner().invoke(cli, ["ask", "Which page?", *base, "--top-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["sources"]) == 2
    for gone in ("--pages", "--max-tokens", "--top-p"):
        r = CliRunner().invoke(cli, ["ask", "Which page?", *base, gone, "2"])
        assert r.exit_code == 2 and "No such option" in r.output


def test_interactive_is_a_conversation(cli, tiny_index, tiny_retriever_bundle, tiny_generator_bundle, monkeypatch):
    from colrag.ask import Asker

    asked: list[str] = []
    real = Asker.stream

    def stream(self, question, prepared, answer, **options):
        asked.append(question)
        if question.endswith("stop me"):
            yield "partial"
            raise KeyboardInterrupt
        yield from real(self, question, prepared, answer, **options)

    monkeypatch.setattr(Asker, "stream", stream)
    base = _base(tiny_index, tiny_retriever_bundle, tiny_generator_bundle)
    session = "\n".join(["And in 2021?", "", "/pages", "stop me", "/new", "Start again"]) + "\n"
    r = CliRunner().invoke(cli, ["ask", "What was revenue in 2020?", *base, "-i"], input=session)
    assert r.exit_code == 0, r.output  # Ctrl-D (end of input) leaves cleanly
    assert asked[0] == "What was revenue in 2020?"
    first_turn = "What was revenue in 2020?<|im_end|>\n<|im_start|>assistant\n"
    assert asked[1].startswith(first_turn) and asked[1].endswith("<|im_start|>user\nAnd in 2021?")
    assert asked[2].startswith(first_turn) and asked[2].endswith("stop me")
    assert asked[3] == "Start again"  # /new: the earlier turns are gone
    assert r.stdout.count("Sources:") == 2  # after the first answer, and for /pages; not after every answer
    assert "partial [stopped]" in r.stdout and "Traceback" not in r.output
