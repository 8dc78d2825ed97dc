"""Installing or exporting prints colrag's own progress only, unless --verbose: no torch.onnx
chatter, no torchvision warnings, no onnxscript INFO flood, no foreign progress bars, no
FutureWarnings from torch.export."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

pytest.importorskip("torch")
pytest.importorskip("transformers")


ROOT = Path(__file__).resolve().parents[1]

# colrag's own progress lines (colrag.install._log, colrag.export.steps.log)
OWN = re.compile(
    r"^(retriever|generator): |^loading |^exporting the |^quantizing the |^checking the "
    r"graphs|^(retriever|generator) bundle written"
    r"|^sharing the vision tower|^note: "
)


def _run(code_or_args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLRAG_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("COLRAG_DEBUG", None)
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def _foreign(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not OWN.search(line)]


def test_install_prints_only_colrags_progress(tiny_colqwen2_checkpoint, tmp_path):
    r = _run(
        [
            "-m",
            "colrag",
            "models",
            "install",
            "--only",
            "retriever",
            "--retriever-from",
            str(tiny_colqwen2_checkpoint),
            "--models-dir",
            str(tmp_path / "models"),
        ],
        tmp_path / "home",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert _foreign(r.stderr) == [], r.stderr[-3000:]
    assert "exporting the vision tower" in r.stderr and r.stdout.startswith("installed\tretriever")


def test_export_after_the_quantizer_import_stays_quiet(tiny_qwen2vl_checkpoint, tmp_path):
    """Importing onnxruntime's MatMulNBits quantizer calls logging.basicConfig(level=INFO): an export
    that follows it (the generator after the retriever, in `models install`) must not print
    onnxscript's / onnx_ir's INFO lines; --verbose lets them through."""
    script = (
        "import sys, onnxruntime.quantization.matmul_nbits_quantizer\n"
        "from colrag.export.generator import export_generator\n"
        "export_generator(sys.argv[1], sys.argv[2], quantize='int8', verbose=sys.argv[3] == 'verbose')\n"
    )
    r = _run(["-c", script, str(tiny_qwen2vl_checkpoint), str(tmp_path / "gen"), "quiet"], tmp_path / "home")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _foreign(r.stderr) == [], r.stderr[-3000:]
    assert "quantizing the decoder graph" in r.stderr


def test_verbose_lets_the_libraries_talk(tiny_colqwen2_checkpoint, tmp_path):
    r = _run(
        [
            "-m",
            "colrag",
            "models",
            "export",
            "retriever",
            str(tiny_colqwen2_checkpoint),
            "--out",
            str(tmp_path / "r"),
            "--verbose",
        ],
        tmp_path / "home",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[torch.onnx]" in r.stderr  # torch's own progress, on stderr (stdout holds the bundle path only)
    assert r.stdout.strip() == str(tmp_path / "r")


def test_quiet_export_filters_foreign_warnings_and_restores_logging():
    import logging

    from colrag.export.common import quiet_export

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_export():
            warnings.warn_explicit(
                "`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "copyreg.py", 105, module="copyreg"
            )
            logging.basicConfig(level=logging.INFO)  # what the quantizer import does: a no-op here
            logging.getLogger("onnxscript").info("a rewrite rule applied")
        warnings.warn("colrag's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["colrag's own warning"]
    assert root.level == level and root.handlers == handlers
