"""`colrag ask`: retrieve the best page(s), let Qwen2-VL read them, answer with sources.

The answer streams to stdout as it is generated, then the sources (file, page, score);
`--json` prints the answer, its sources and timings once done instead (docs/JSON.md).
Notes (page images written by --show, why stored page features were not used, timings
with --stats) go to stderr. `-i` goes on with follow-up questions about the same pages,
the conversation kept in the prompt (colrag.vlm.chat). The pipeline itself is colrag.ask.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .options import (
    GENERATOR_OPTION,
    INDEX_OR_QDRANT_OPTION,
    MODEL_THREADS_OPTION,
    MODELS_DIR_OPTION,
    RETRIEVER_OPTION,
    password_option,
    png_out_option,
)
from .output import printable


def _show(images, names: list[str], out: Path | None) -> None:
    """The page images given to the model, as PNGs in --out (default $COLRAG_HOME/out, README: where data lives)."""
    from ..paths import output_dir

    folder = out or output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names, strict=True):
        path = folder / f"page-{name}.png"
        image.save(path)
        typer.echo(f"page image: {printable(path)}", err=True)


@app.command("ask")
def ask_cmd(
    question: str = typer.Argument(..., help="The question."),
    image: list[Path] | None = typer.Option(
        None,
        "--image",
        help="Ask about this image file instead of the index (repeat for several images).",
    ),
    top_k: int = typer.Option(
        1,
        "--top-k",
        "-k",
        min=1,
        help="Give the model the top K retrieved pages as images (pages, as in `colrag search`).",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the answer, its sources and timings as JSON once done (no streaming; docs/JSON.md).",
    ),
    show: bool = typer.Option(
        False,
        "--show",
        help="Write the page image(s) given to the model as PNG (in --out) and print their paths on stderr.",
    ),
    out: Path | None = png_out_option("--show"),
    index: str | None = INDEX_OR_QDRANT_OPTION,
    models_dir: Path | None = MODELS_DIR_OPTION,
    retriever: Path | None = RETRIEVER_OPTION,
    generator: Path | None = GENERATOR_OPTION,
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", min=1, help="Stop after this many new tokens (as in `colrag models compare`)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (default); > 0 samples."),
    sample_top_p: float = typer.Option(
        1.0, "--sample-top-p", min=0.0, max=1.0, help="Sampling: nucleus mass (with --temperature > 0)."
    ),
    sample_top_k: int = typer.Option(
        0,
        "--sample-top-k",
        min=0,
        help="Sampling: draw among the k most likely tokens; 0 = off (with --temperature > 0).",
    ),
    repetition_penalty: float = typer.Option(
        1.0,
        "--repetition-penalty",
        min=0.0,
        help="> 1 discourages repeating any token already in the prompt or answer.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for reproducible sampling."),
    max_pixels: int | None = typer.Option(
        None,
        "--max-pixels",
        min=4 * 28 * 28,
        help="Pixels per page/image for the generator \\[default: for indexed pages the index's own budget (768*28*28, "
        "which lets `ask` use the stored page features); for --image the bundle's, 1280*28*28].",
    ),
    threads: int | None = MODEL_THREADS_OPTION,
    backend: str | None = BACKEND_OPTION,
    precision: str | None = PRECISION_OPTION,
    password: str | None = password_option("indexed PDFs"),
    stats: bool = typer.Option(
        False,
        "--stats",
        help="Print timings (load, retrieve, vision, prefill, first token, decode) and where the page features "
        "came from on stderr.",
    ),
    page_features: bool = typer.Option(
        True,
        "--page-features/--no-page-features",
        help="Use the page features the index stored (no rendering, no vision tower) when the generator has "
        "the index's vision tower; --no-page-features renders the page(s) and computes them.",
    ),
    cache: bool = typer.Option(
        True,
        "--cache/--no-cache",
        help="Keep what the model computed for the page(s) (bounded, under $COLRAG_HOME/cache/prefixes) so the next "
        "question on the same page skips the vision tower and the page's prefill.",
    ),
    use_server: bool = typer.Option(
        True,
        "--server/--no-server",
        help="Use a running `colrag serve` (models already loaded) when it has the same bundles \\[default: "
        "when running].",
    ),
    interactive: bool = typer.Option(
        False,
        "--interactive",
        "-i",
        help="After the answer, ask follow-up questions about the same page(s), with line editing and history "
        'where the platform has readline; the conversation stays in the prompt ("and in 2021?" works). /new '
        "starts a new conversation, /pages shows the sources, Ctrl-C stops the current answer, Ctrl-D (or /quit) "
        "leaves.",
    ),
) -> None:
    """Answer a question from the indexed pages (or about --image files), citing the pages used."""
    from ..ask import Answer, Asker, GenerationOptions
    from ..errors import InputError

    if interactive and as_json:
        raise InputError("--interactive streams answers as text; it cannot be combined with --json")
    options = GenerationOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=sample_top_p,
        top_k=sample_top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    ).as_kwargs()
    images = [str(p.resolve()) for p in image] if image else None
    setup: dict[str, Any] = dict(  # Asker.open's arguments, which a running server must match
        models_dir=models_dir,
        index=index,
        retriever=retriever,
        generator=generator,
        threads=threads,
        page_features=page_features,
        max_pixels=max_pixels,
        password=password,
        backend=backend,
        precision=precision,
    )
    if use_server and cache and not (interactive or show):
        answer = _ask_server(question, top_k, images, options, as_json, **setup)
        if answer is not None:
            _print_answer(answer, as_json, image, streamed=True, stats=stats, question=question)
            return
    asker = Asker.open(**setup, cache=cache, keep_retriever=False)
    from .progress import loading

    asker.loading = loading  # "loading the retriever…" / "loading the generator…" on a terminal (issue 14)
    prepared = asker.prepare(question, pages=top_k, images=images)
    for note in prepared.notes:
        typer.echo(f"note: {note}", err=True)
    if show and prepared.hits:
        _show(asker.page_images(prepared.hits), [f"{Path(h.file).stem}-p{h.page}" for h in prepared.hits], out)
    answer = Answer()
    for piece in asker.stream(question, prepared, answer, **options):
        if not as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    _print_answer(answer, as_json, image, streamed=not as_json, stats=stats, question=question)
    if stats:
        steps = asker.runtimes().items()
        typer.echo(
            "graphs: " + ", ".join(f"{step} on {where or 'not loaded (page features)'}" for step, where in steps),
            err=True,
        )
    if interactive:
        _chat(asker, prepared, question, answer, options, stats)


def _chat(asker, prepared, question: str, first, options: dict, stats: bool) -> None:
    """`ask -i`: follow-up questions about the same page(s), the conversation kept in the prompt.

    The sources were printed once, after the first answer; /pages prints them again."""
    from ..ask import Answer
    from ..vlm.chat import Conversation

    tty = sys.stdin.isatty()
    if tty:
        with contextlib.suppress(ImportError):  # readline is not on every platform
            import readline  # noqa: F401  (line editing and history for input())
    conversation = Conversation()
    conversation.add(question, first.text)
    typer.echo(
        "follow-up questions about the same page(s): /new starts over, /pages shows the sources, "
        "Ctrl-C stops an answer, Ctrl-D or /quit leaves",
        err=True,
    )
    while True:
        try:
            line = input("> " if tty else "").strip()
        except EOFError:
            return
        except KeyboardInterrupt:  # at the prompt: a fresh line, not a traceback
            typer.echo("", err=True)
            continue
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/new":
            conversation.reset()
            typer.echo("(a new conversation about the same page(s))", err=True)
            continue
        if line == "/pages":
            _print_sources(first.sources)
            continue
        answer = Answer()
        try:
            for piece in asker.stream(conversation.prompt(line), prepared, answer, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        conversation.add(line, answer.text)
        if stats:
            _print_stats(answer)


def _ask_server(
    question: str,
    pages: int,
    images: list[str] | None,
    options: dict,
    as_json: bool,
    *,
    models_dir,
    index,
    retriever,
    generator,
    threads,
    page_features,
    max_pixels,
    password,
    backend,
    precision,
):
    """The answer from a running `colrag serve` (streamed to stdout unless --json), or None to answer here."""
    from ..ask import Answer
    from ..paths import generator_dir, index_dir, retriever_dir
    from ..serve import ask_server
    from ..store.qdrant import is_qdrant_spec

    if is_qdrant_spec(index):
        return None  # a Qdrant index is answered here (colrag serve takes local indexes)

    request = {
        "question": question,
        "pages": pages,
        "images": images,
        "index": str(index_dir(index).resolve()),
        "page_features": page_features,
        "max_pixels": max_pixels,
        "password": password,
        "options": options,
    }
    events = ask_server(
        request, retriever_dir(retriever, models_dir), generator_dir(generator, models_dir), threads, backend, precision
    )
    if events is None:
        return None
    for event in events:
        if "note" in event:
            typer.echo(f"note: {event['note']}", err=True)
        elif "piece" in event and not as_json:
            sys.stdout.write(event["piece"])
            sys.stdout.flush()
        elif "answer" in event:
            answer = Answer.from_dict(event["answer"])
            answer.notes = [*answer.notes, "answered by colrag serve"]
            answer.timings.load_s = 0.0  # the server loaded the models before this question
            return answer
    return None


def _print_answer(answer, as_json: bool, image, *, streamed: bool, stats: bool, question: str = "") -> None:
    """After the streamed text (or instead of it, with --json): the sources, then the stats on stderr."""
    if as_json:
        from ..jsonout import document, dumps, hit

        sources = [{**hit(s.file, s.page, s.score), "features": s.features} for s in answer.sources]
        typer.echo(
            dumps(
                document(
                    "ask",
                    question=question,
                    answer=answer.text.strip(),
                    sources=sources,
                    images=[str(p) for p in image] if image else [],
                    timings=answer.timings.as_dict(),
                    runtimes=answer.runtimes,
                )
            )
        )
    else:
        sys.stdout.write("\n")
        _print_sources(answer.sources)
    if stats:
        _print_stats(answer)


def _print_sources(sources) -> None:
    out = sys.stdout
    if sources:
        out.write("\nSources:\n")
        for rank, s in enumerate(sources, 1):
            out.write(f"  [{rank}] {printable(s.file)}, page {s.page} (score {s.score:.4f})\n")
    out.flush()


def _print_stats(answer) -> None:
    t = answer.timings
    kinds = sorted({s.features for s in answer.sources})
    cached = ", page prefix from cache" if answer.prefix_cached else ""
    features = f"; page features: {', '.join(kinds)}" if kinds else ""
    if "answered by colrag serve" in answer.notes:
        features += "; answered by colrag serve (models already loaded)"
    decode_rate = (t.new_tokens - 1) / t.decode_s if t.decode_s > 0 and t.new_tokens > 1 else 0.0
    typer.echo(
        f"load {t.load_s:.2f}s, retrieve {t.retrieve_s:.2f}s, vision {t.vision_s:.2f}s, "
        f"prefill {t.prefill_s:.2f}s ({answer.n_prompt_tokens} tokens{cached}), first token {t.first_token_s:.2f}s, "
        f"decode {t.decode_s:.2f}s ({t.new_tokens} tokens, {decode_rate:.2f} tok/s), stopped on {answer.finish_reason}"
        f"{features}",
        err=True,
    )
