"""`colrag models install`: download the checkpoints and export them to bundles."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from ..cli import models_app
from ..install import PARTS, SPECS
from .models_cmd import QUANTIZE_OPTION, Quantize
from .options import EXPORT_VERBOSE_OPTION, MODELS_DIR_OPTION
from .output import printable

# Built from install.PARTS so the CLI's choices cannot drift from the installer's;
# mypy cannot see members of an Enum made from a computed dict, hence the ignores.
Part = Enum("Part", {p: p for p in PARTS}, type=str)  # type: ignore[misc]

_SOURCES = ", ".join(f"{s.repo_id}@{s.revision} ({s.part})" for s in SPECS.values())


@models_app.command(
    "install",
    help=(
        "Download the retriever and generator checkpoints from the Hugging Face Hub and export them to "
        f"bundles in the models dir (<models-dir>/retriever, <models-dir>/generator). Sources: {_SOURCES}.\n\n"
        "Downloads go to the huggingface_hub cache (HF_HOME) and resume after an interruption; "
        "HF_HUB_OFFLINE=1 installs from that cache alone; HF_ENDPOINT selects a mirror. "
        "Free disk and memory are checked before anything starts. "
        "To use checkpoints already on disk, give their folders (a download or `save_pretrained` output, "
        "holding config.json) with --retriever-from / --generator-from: nothing is downloaded for them. "
        "Needs the export and install extras: pip install 'colrag\\[export,install]'."
    ),
)
def install_cmd(
    only: Part | None = typer.Option(None, "--only", help="Install one part only."),
    retriever_from: Path | None = typer.Option(
        None,
        "--retriever-from",
        metavar="DIR",
        help="ColQwen2 checkpoint folder on disk (like vidore/colqwen2-v1.0-hf) instead of a download.",
    ),
    generator_from: Path | None = typer.Option(
        None,
        "--generator-from",
        metavar="DIR",
        help="Qwen2-VL checkpoint folder on disk (like Qwen/Qwen2-VL-2B-Instruct) instead of a download.",
    ),
    quantize: Quantize = QUANTIZE_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    force: bool = typer.Option(False, "--force", help="Go on even when the disk or memory check says it will not fit."),
    reinstall: bool = typer.Option(
        False, "--reinstall", help="Replace bundles that are already installed (they are kept otherwise)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: bool = EXPORT_VERBOSE_OPTION,
) -> None:
    from ..install import install
    from ..paths import models_dir as default_models_dir

    results = install(
        default_models_dir(models_dir),
        only=only.value if only else None,
        retriever_from=retriever_from,
        generator_from=generator_from,
        quantize=Quantize(quantize).value,
        force=force,
        reinstall=reinstall,
        verbose=verbose,
    )
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    for r in results:
        source = f"{r.source}@{r.revision}" if r.revision else str(r.source)
        typer.echo(
            f"{r.status}\t{r.part}\t{printable(r.bundle)}\t{printable(source)}\t{r.files} files\t{r.bytes / 1e9:.2f} GB"
        )
