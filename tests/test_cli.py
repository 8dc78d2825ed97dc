"""CLI contract: --version, --help, and expected failures as one line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def colrag(*args, env=None):
    return subprocess.run([sys.executable, "-m", "colrag", *args], capture_output=True, text=True, env=env)


def test_version_is_fast_and_imports_no_runtime():
    code = "import sys; sys.argv=['colrag','--version']; from colrag.cli import main\ntry:\n main()\nexcept SystemExit: pass\nprint('onnxruntime' in sys.modules, 'torch' in sys.modules)"
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
