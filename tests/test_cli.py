"""CLI contract: --version, --help, and expected failures as one line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def colrag(*args, env=None):
    return subprocess.run([sys.executable, "-m", "colrag", *args], capture_output=True, text=True, env=env)


def test_version_is_fast_and_imports_no_runtime():
    code = (
        "import sys; sys.argv=['colrag','--version']; from colrag.cli import main\ntry:\n main()\nexcept "
        "SystemExit: pass\nprint('onnxruntime' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out[:2] == ["colrag", "0.1.0"]
    assert out[-2:] == ["False", "False"]


@pytest.mark.parametrize("command", [[], ["models"], ["models", "export"]])
def test_help_lists_commands(command):
    result = colrag(*command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


def test_export_of_a_folder_without_weights_is_one_line(tmp_path, tiny_colqwen2_checkpoint):
    (tmp_path / "config.json").write_text((tiny_colqwen2_checkpoint / "config.json").read_text())
    result = colrag("models", "export", "retriever", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot load the weights")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_export_of_a_non_checkpoint_is_one_line(tmp_path):
    result = colrag("models", "export", "retriever", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {tmp_path} is not a checkpoint folder (no config.json)"


def test_verify_reports_a_corrupt_bundle(tiny_retriever_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "retriever"
    shutil.copytree(tiny_retriever_bundle, bundle)
    assert colrag("models", "verify", str(bundle)).returncode == 0
    data = bundle / "text.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    result = colrag("models", "verify", str(bundle))
    assert result.returncode == 1 and "text.onnx.data" in result.stdout


def test_models_list_json(tiny_retriever_bundle, tmp_path):
    import shutil

    shutil.copytree(tiny_retriever_bundle, tmp_path / "retriever")
    rows = json.loads(colrag("models", "list", "--json", "--models-dir", str(tmp_path)).stdout)
    assert [(r["kind"], r["ok"]) for r in rows] == [("retriever", True)]


def test_os_errors_are_one_line(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("x")  # a file where the models folder should be
    result = colrag("models", "export", "retriever", str(tmp_path), "--out", str(blocked / "sub" / "retriever"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command", [["models", "install"], ["models", "export", "retriever"], ["models", "export", "generator"]]
)
def test_one_quantize_default_stated_in_help(command):
    import os

    result = colrag(*command, "--help", env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    text = " ".join(x.strip(" │") for x in result.stdout.splitlines())
    option = text[text.index("--quantize") :]
    option = option[: option.index(" --", 2)]  # up to the next option
    assert "[default: int8]" in option and "int8 (the default" in " ".join(option.split())


@pytest.mark.parametrize("kind", ["retriever", "generator"])
def test_export_defaults_to_int8(kind, monkeypatch, tmp_path):
    """`colrag models export` quantizes like `colrag models install` unless told otherwise."""
    import importlib

    from typer.testing import CliRunner

    from colrag.cli import _register_commands, app

    _register_commands()
    module = importlib.import_module(f"colrag.export.{kind}")
    seen = {}
    monkeypatch.setattr(module, f"export_{kind}", lambda src, out, **kw: seen.update(kw))
    result = CliRunner().invoke(app, ["models", "export", kind, str(tmp_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert seen["quantize"] == "int8"
    result = CliRunner().invoke(
        app, ["models", "export", kind, str(tmp_path), "--out", str(tmp_path / "b"), "--quantize", "none"]
    )
    assert result.exit_code == 0 and seen["quantize"] == "none"


def test_readme_says_how_to_get_the_cpu_torch():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    one_liner = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu &&" in one_liner
    assert one_liner.index("download.pytorch.org") < one_liner.index("pip install -e '.[export,")
    assert "never to index, search or ask" in readme
