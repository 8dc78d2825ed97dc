"""How `--help` reads: one place for the examples, paragraph reflow and the option metavars.

typer renders help in rich markup mode. Three things are tidied here, for every command:

- help paragraphs: docstrings are wrapped at source width; rich mode keeps those line
  breaks, so each paragraph is joined into one line and rich wraps it to the terminal;
- examples: each command's epilog lists a few command lines (EXAMPLES), one per line;
- the type column: typer 0.2x prints `<bool>` after a flag and `<int>`, `<path>`,
  `<list[Path]>` after values. A flag shows nothing; a value shows its metavar when the
  option names one, else a plain upper-case word (N, NUMBER, TEXT, PATH); choices stay
  `a|b|c`. tests/test_help.py fails if a `<...>` label comes back (e.g. after a typer upgrade).
"""

from __future__ import annotations

import inspect
import re

import typer

EXAMPLES: dict[str, list[str]] = {
    "index": [
        "colrag index ~/reports",
        "colrag index ~/reports/2023.pdf ~/scans --index work",
        "colrag index ~/reports --retry-failed --json",
    ],
    "search": [
        'colrag search "revenue by region"',
        'colrag search "energy use" --top-k 10 --json',
        'colrag search "org chart" --explain',
    ],
    "status": ["colrag status", "colrag status --index work --json", "colrag status --check"],
    "remove": ["colrag remove ~/reports/old.pdf", "colrag remove ~/reports/2019"],
    "compact": ["colrag compact", "colrag compact --index work --json"],
    "ask": [
        'colrag ask "Which region grew fastest?"',
        'colrag ask --top-k 2 --show "What does the chart compare?"',
        'colrag ask -i "What does the table show?"',
        'colrag ask "Summarise the page." --temperature 0.7 --sample-top-p 0.9 --seed 1 --max-new-tokens 128',
        'colrag ask --image chart.png "Describe this image."',
    ],
    "doctor": ["colrag doctor", "colrag doctor --full --json"],
    "serve": ["colrag serve", "colrag serve --threads 2"],
    "eval": [
        "colrag eval ~/data/docvqa",
        "colrag eval ~/data/docvqa --json > docvqa.json",
        "colrag eval ~/data/docvqa --retriever models/retriever-fp32 --compare models/retriever",
    ],
    "export-index": [
        "colrag export-index --to qdrant+edge:~/colrag-qdrant",
        "colrag export-index --index work --to qdrant:http://localhost:6333/reports --json",
    ],
    "models install": [
        "colrag models install",
        "colrag models install --only retriever --quantize none",
        "HF_HUB_OFFLINE=1 colrag models install",
        "colrag models install --retriever-from ~/ckpt/colqwen2-v1.0-hf --generator-from ~/ckpt/Qwen2-VL-2B-Instruct",
    ],
    "models list": ["colrag models list", "colrag models list --json"],
    "models verify": ["colrag models verify", "colrag models verify models/retriever"],
    "models compare": [
        "colrag models compare models/retriever-fp32 models/retriever ~/reports",
        "colrag models compare models/generator-fp32 models/generator page.png --max-new-tokens 64",
    ],
    "models export retriever": [
        "colrag models export retriever ~/ckpt/colqwen2-v1.0-hf",
        "colrag models export retriever ~/ckpt/colqwen2-v1.0-hf --out models/retriever-fp32 --quantize none",
    ],
    "models export generator": [
        "colrag models export generator ~/ckpt/Qwen2-VL-2B-Instruct --share-vision-with models/retriever",
    ],
}

_TYPE_WORDS = {"int": "N", "float": "NUMBER", "str": "TEXT", "path": "PATH", "file": "FILE", "directory": "DIR"}


def reflow(text: str | None) -> str | None:
    """Join the lines of each paragraph (blank-line separated) into one line."""
    if not text:
        return text
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def epilog(name: str) -> str | None:
    lines = EXAMPLES.get(name)
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


def tidy(app: typer.Typer, prefix: str = "") -> None:
    """Reflow help paragraphs and attach examples to every command of `app` and its sub-apps."""
    for info in app.registered_commands:
        name = (prefix + " " + (info.name or info.callback.__name__ if info.callback else "")).strip()
        info.help = reflow(info.help or (inspect.getdoc(info.callback) if info.callback else None))
        if info.epilog is None:
            info.epilog = epilog(name)
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        group_name = (prefix + " " + (group.name or "")).strip()
        sub.info.help = reflow(sub.info.help)
        tidy(sub, group_name)
    _plain_metavars()


def _plain_metavars() -> None:
    """Replace typer's `<type>` labels in the help's type column (see the module doc)."""
    from typer import core

    option_cls = getattr(core, "TyperOption", None)
    if (
        option_cls is None
        or getattr(option_cls, "_colrag_plain", False)
        or not hasattr(option_cls, "display_type_rich")
    ):
        return

    def display_type_rich(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False):
            return None
        label = self.display_type(ctx) if hasattr(self, "display_type") else None
        if not label:
            return None
        inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
        if "|" in inner:
            word = inner.removeprefix("list[").removesuffix("]")
        else:
            base = inner.removeprefix("list[").removesuffix("]").split(" ")[0].lower()
            word = _TYPE_WORDS.get(base, base.upper())
        return word + ("..." if self.nargs != 1 else "")

    option_cls.display_type_rich = display_type_rich
    argument_cls = getattr(core, "TyperArgument", None)
    if argument_cls is not None and hasattr(argument_cls, "display_type_rich"):
        argument_cls.display_type_rich = lambda self, ctx: None  # the argument's name says it (PATHS...)
    option_cls._colrag_plain = True
