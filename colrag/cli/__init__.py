"""The `colrag` command. Thin: parses arguments, calls the library, prints.

Each command group lives in its own module and registers itself on `app`;
heavy imports (onnxruntime, numpy, pymupdf) happen inside the commands so that
`colrag --version` and `--help` answer instantly.
"""

from __future__ import annotations

import os
import sys

import typer

from .. import __version__
from ..errors import ColragError
from .output import printable

app = typer.Typer(
    name="colrag",
    help="Ask questions about PDF reports: pages are embedded as images (ColQwen2) and answered by Qwen2-VL, locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
BACKEND_OPTION = typer.Option(
    None,
    "--backend",
    envvar="COLRAG_BACKEND",
    help="Where the model graphs run: auto, onnxruntime or openvino (pip install 'colrag\\[openvino]') "
    "\\[default: auto: "
    "OpenVINO for the graphs it runs faster on this kind of CPU, when installed; onnxruntime otherwise].",
)
PRECISION_OPTION = typer.Option(
    None,
    "--precision",
    envvar="COLRAG_PRECISION",
    help="Compute precision of OpenVINO graphs: auto, f32 or bf16 \\[default: auto: bf16 where the CPU has it]. "
    "onnxruntime always computes in f32.",
)
models_app = typer.Typer(
    help="Export, install, list and verify model bundles.", no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(models_app, name="models")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"colrag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """colrag: local question answering over PDF page images."""


def _register_commands() -> None:
    # Importing a module registers its commands on `app` / `models_app`.
    from . import models_cmd  # noqa: F401  (imported to register its commands)

    for optional in (
        "index_cmd",
        "search_cmd",
        "status_cmd",
        "remove_cmd",
        "compact_cmd",
        "ask_cmd",
        "install_cmd",
        "doctor_cmd",
        "eval_cmd",
        "scale_cmd",
        "serve_cmd",
    ):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{optional}":
                raise
    from .helptext import tidy

    tidy(app)  # reflowed paragraphs, examples, plain metavars in every --help


def main() -> None:
    _register_commands()
    try:
        app()
    except ColragError as exc:
        if os.environ.get("COLRAG_DEBUG"):
            raise
        typer.echo(f"error: {printable(exc)}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Disk full, permission denied, a folder that vanished: the environment, not a bug.
        if os.environ.get("COLRAG_DEBUG"):
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        typer.echo(
            f"error: {printable(exc.strerror or exc)}{printable(where)} (COLRAG_DEBUG=1 shows the traceback)", err=True
        )
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
