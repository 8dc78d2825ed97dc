"""Every command's --help reads cleanly: no `<bool>`-style labels, paragraphs not broken at
source line breaks, and examples in the epilog that name real commands and options."""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _click_root():
    import typer

    from colrag.cli import _register_commands, app

    _register_commands()
    return typer.main.get_command(app)


def _commands(group, path: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = [path for path, _ in _commands(_click_root())]


def test_every_command_is_covered():
    from colrag.cli.helptext import EXAMPLES

    assert {" ".join(p) for p in COMMANDS} <= set(EXAMPLES)  # (an entry may wait for its command to land)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_reads_cleanly(path):
    env = {**os.environ, "COLUMNS": "120", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "colrag", *path, "--help"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in ("<bool>", "<int", "<str>", "<path>", "<float>", "<list[", "<text>"):
        assert label not in out, f"{label} in {' '.join(path)} --help"
    assert "Examples:" in out
    examples = [line.strip(" │") for line in out[out.index("Examples:") :].splitlines()[1:] if "colrag " in line]
    assert examples
    # a help paragraph is reflowed by rich to the terminal's width (200 here), not broken at the
    # source's line breaks (<= 120 columns): inside a paragraph every line but the last is long
    wide = subprocess.run(
        [sys.executable, "-m", "colrag", *path, "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        cwd=ROOT,
    ).stdout
    intro = wide[wide.index("Usage:") : wide.index("╭")].splitlines()
    intro = intro[next(i for i, x in enumerate(intro) if not x.strip()) :]  # after the usage line(s)
    for first, second in itertools.pairwise(intro):
        if first.strip() and second.strip():
            assert len(first.strip()) > 150, f"paragraph broken after {first.strip()!r}"


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_examples_name_real_options(path):
    from colrag.cli.helptext import EXAMPLES

    cmd = _click_root()
    for name in path:
        cmd = cmd.commands[name]
    options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
    for line in EXAMPLES[" ".join(path)]:
        words = shlex.split(line.split(">")[0])
        while "=" in words[0]:  # an environment assignment before the command
            words.pop(0)
        assert words[: 1 + len(path)] == ["colrag", *path], line
        for w in words[1 + len(path) :]:
            if w.startswith("-"):
                assert w in options, f"{line}: {w} is not an option of colrag {' '.join(path)}"
