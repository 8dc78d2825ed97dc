"""`colrag ask` end to end on the tiny models: index -> retrieve -> render -> answer -> sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner

from colrag.errors import BundleError, IndexStoreError
from tests.tiny_models import SMALL

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references


def _ask(cli, *args):
    return CliRunner().invoke(cli, ["ask", *args], catch_exceptions=True)


def test_ask_answers_from_the_index_with_sources(
    cli, tiny_index, tiny_retriever_bundle, tiny_generator_bundle, tmp_path
):
    args = [
        "What is on page one?",
        "--index",
        str(tiny_index),
        "--retriever",
        str(tiny_retriever_bundle),
        "--generator",
        str(tiny_generator_bundle),
        "--max-new-tokens",
        "8",
        "--max-pixels",
        SMALL,
        "--threads",
        "1",
    ]
    result = _ask(cli, *args)
    assert result.exit_code == 0, result.output
    answer, _, sources = result.stdout.partition("\nSources:\n")
    assert answer.strip()
    lines = [line for line in sources.splitlines() if line.strip()]
    assert len(lines) == 1 and ".pdf, page " in lines[0] and "score" in lines[0]

    result = _ask(cli, *args, "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"schema", "command", "question", "answer", "sources", "images", "timings", "runtimes"}
    assert set(payload["runtimes"]) == {"vision", "prefill", "decode"}
    assert all(where.split()[0] in ("onnxruntime", "openvino") for where in payload["runtimes"].values())
    assert payload["images"] == [] and payload["command"] == "ask"
    assert set(payload["timings"]) >= {"retrieve_s", "vision_s", "prefill_s", "first_token_s", "decode_s", "new_tokens"}
    assert 1 <= payload["timings"]["new_tokens"] <= 8 and payload["timings"]["prefill_s"] > 0
    assert isinstance(payload["answer"], str) and payload["answer"]
    assert len(payload["sources"]) == 2
    for s in payload["sources"]:
        assert s["file"].endswith(".pdf") and s["page"] >= 1 and isinstance(s["score"], float)
        assert s["features"] == "computed"  # this generator has its own vision tower
    assert payload["sources"][0]["score"] >= payload["sources"][1]["score"]


def test_ask_show_writes_the_pages_used(cli, tiny_index, tiny_retriever_bundle, tiny_generator_bundle):
    from PIL import Image

    result = _ask(
        cli,
        "Which chart?",
        "--index",
        str(tiny_index),
        "--retriever",
        str(tiny_retriever_bundle),
        "--generator",
        str(tiny_generator_bundle),
        "--max-new-tokens",
        "2",
        "--max-pixels",
        SMALL,
        "--show",
        "--top-k",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    paths = [line.split("page image: ", 1)[1] for line in result.stderr.splitlines() if line.startswith("page image: ")]
    assert len(paths) == 2
    assert all(
        Path(p).parent == Path(os.environ["COLRAG_HOME"]) / "out" for p in paths
    )  # not /tmp: cleaned with the test
    for p in paths:
        with Image.open(p) as img:
            assert img.width * img.height <= 1.1 * int(SMALL)
    json.loads(result.stdout)  # stdout stays clean JSON


def test_ask_about_an_image_without_an_index(cli, tiny_generator_bundle, tmp_path):
    from tests.test_generator import synthetic_image

    paths = []
    for i, size in enumerate([(200, 120), (90, 150)]):
        paths.append(tmp_path / f"img{i}.png")
        synthetic_image(*size, seed=i).save(paths[-1])
    result = _ask(
        cli,
        "Describe this image.",
        "--image",
        str(paths[0]),
        "--generator",
        str(tiny_generator_bundle),
        "--max-new-tokens",
        "10",
        "--index",
        str(tmp_path / "no-index"),
        "--stats",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and "Sources:" not in result.stdout
    assert "prefill" in result.stderr

    # the same answer via the Python API, and --json with two images
    import colrag

    want = colrag.Generator.load(tiny_generator_bundle).generate(
        "Describe this image.", images=[paths[0]], max_new_tokens=10
    )
    assert result.stdout.rstrip("\n") == want.text
    result = _ask(
        cli,
        "Compare.",
        "--image",
        str(paths[0]),
        "--image",
        str(paths[1]),
        "--generator",
        str(tiny_generator_bundle),
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["sources"] == [] and payload["images"] == [str(p) for p in paths] and payload["command"] == "ask"


def test_sampling_options_reach_the_generator(cli, tiny_generator_bundle, tmp_path):
    from tests.test_generator import synthetic_image

    img = tmp_path / "img.png"
    synthetic_image(120, 120, seed=3).save(img)
    base = [
        "Describe.",
        "--image",
        str(img),
        "--generator",
        str(tiny_generator_bundle),
        "--max-new-tokens",
        "12",
        "--json",
        "--temperature",
        "1.0",
        "--sample-top-k",
        "50",
        "--sample-top-p",
        "0.9",
        "--repetition-penalty",
        "1.1",
    ]
    a = json.loads(_ask(cli, *base, "--seed", "7").stdout)["answer"]
    b = json.loads(_ask(cli, *base, "--seed", "7").stdout)["answer"]
    c = json.loads(_ask(cli, *base, "--seed", "8").stdout)["answer"]
    assert a == b != c


def test_missing_generator_says_what_to_run(cli, tmp_path):
    result = _ask(cli, "q", "--models-dir", str(tmp_path))
    assert isinstance(result.exception, BundleError)
    assert "colrag models export generator" in str(result.exception)


def test_missing_index_says_what_to_run(cli, tiny_generator_bundle, tiny_retriever_bundle, tmp_path):
    result = _ask(
        cli,
        "q",
        "--generator",
        str(tiny_generator_bundle),
        "--retriever",
        str(tiny_retriever_bundle),
        "--index",
        str(tmp_path / "nothing"),
    )
    assert isinstance(result.exception, IndexStoreError)
    assert "colrag index" in str(result.exception)


def test_errors_are_one_line_and_exit_non_zero(tmp_path):
    env = {**os.environ, "COLRAG_MODELS": str(tmp_path)}
    env.pop("COLRAG_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "colrag", "ask", "What is it?"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no generator bundle at ") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


def test_export_generator_command(cli, tiny_qwen2vl_checkpoint, tiny_generator_bundle, tmp_path):
    from colrag.vlm.bundle import load_manifest

    # an existing bundle is not replaced without --force
    result = CliRunner().invoke(
        cli, ["models", "export", "generator", str(tiny_qwen2vl_checkpoint), "--out", str(tiny_generator_bundle)]
    )
    assert result.exit_code != 0 and "--force" in str(result.exception)
    # a folder that is not a Qwen2-VL checkpoint
    result = CliRunner().invoke(cli, ["models", "export", "generator", str(tmp_path), "--out", str(tmp_path / "g")])
    assert result.exit_code != 0 and "config.json" in str(result.exception)
    assert load_manifest(tiny_generator_bundle, "generator")["kind"] == "generator"
