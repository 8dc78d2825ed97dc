"""`colrag ask`: retrieve the best page(s), let Qwen2-VL read them, answer with sources.
`colrag models export generator`: export a Qwen2-VL checkpoint to a generator bundle.

The answer streams to stdout as it is generated, then the sources (file, page, score);
`--json` prints {"answer", "sources": [{"file", "page", "score"}]} once done instead.
Notes (page images written by --show, timings with --stats) go to stderr.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ..cli import BACKEND_OPTION, PRECISION_OPTION, app
from .index_cmd import check_threads_option
from .models_cmd import export_app
from .output import printable

MODELS_DIR_OPTION = typer.Option(
    None, "--models-dir", envvar="COLRAG_MODELS",
    help="Folder holding the retriever/ and generator/ bundles \\[default: $COLRAG_HOME/models].",
)


@export_app.command("generator")
def export_generator_cmd(
    src: Path = typer.Argument(..., help="Qwen2-VL checkpoint folder (e.g. a download of Qwen/Qwen2-VL-2B-Instruct)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Bundle folder to write \\[default: <models-dir>/generator]."),
    models_dir: Optional[Path] = MODELS_DIR_OPTION,
    share_vision_with: Optional[Path] = typer.Option(
        None, "--share-vision-with",
        help="A retriever bundle folder: when its vision tower has the same weights, reference its vision graph instead of storing a copy.",
    ),
    opset: int = typer.Option(18, help="ONNX opset of the exported graphs."),
    quantize: str = typer.Option("none", "--quantize", help="Quantization: none (fp32), int8 (weight-only, block-wise), int4 (4-bit language-model weights, int8 vision: faster decoding), or int8-dynamic-vision (int8, with the vision tower on dynamic int8 activations: faster, larger drift); the drift vs fp32 is recorded in the manifest."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show what torch, onnxscript, transformers and onnxruntime print (logs, warnings, progress bars)."),
) -> None:
    """Export a Qwen2-VL generator checkpoint: vision + decoder (KV cache) graphs, embedding table, tokenizer, manifest."""
    from ..export.generator import export_generator
    from ..paths import generator_dir

    target = out or generator_dir(None, models_dir)
    export_generator(src, target, share_vision_with=share_vision_with, opset=opset, quantize=quantize, force=force,
                     verbose=verbose)
    typer.echo(str(target))


def _require_bundle(path: Path, kind: str, flag: str) -> Path:
    from ..bundle import MANIFEST
    from ..errors import BundleError

    if not (path / MANIFEST).is_file():
        raise BundleError(
            f"no {kind} bundle at {path}: run `colrag models install`, or "
            f"`colrag models export {kind} SRC --out {path}` (or pass {flag} DIR)"
        )
    return path


def _retrieve(question: str, n_pages: int, index: Optional[str], models_dir, retriever: Optional[Path], threads: Optional[int],
              backend: Optional[str] = None, precision: Optional[str] = None):
    """The top pages for the question: [Hit(file, page, score)]. The retriever is freed afterwards."""
    from ..errors import IndexStoreError
    from ..paths import index_dir, retriever_dir
    from ..retriever import Retriever
    from ..search import Searcher
    from ..store import Index, RetrieverInfo
    from ..store.index import check_retriever

    target = index_dir(index)
    with Index.open(target) as idx:
        if not idx.snapshot().pages:
            raise IndexStoreError(f"index {target} has no pages yet: run `colrag index DIR` first")
        bundle = _require_bundle(retriever_dir(retriever, models_dir), "retriever", "--retriever")
        if threads:
            import faiss

            faiss.omp_set_num_threads(threads)
        model = Retriever.load(bundle, threads=threads, backend=backend, precision=precision)
        check_retriever(target, idx.manifest, RetrieverInfo.of(model))
        hits = Searcher(idx, model).search(question, n_pages)
    del model
    gc.collect()  # the generator needs the memory more
    return hits


def _render_hits(hits, max_pixels: int, password: Optional[str]):
    """Render each hit's page at about the generator's resolution."""
    from ..errors import InputError
    from ..render import RenderOptions, open_pdf, render_page

    images = []
    for hit in hits:
        try:
            doc = open_pdf(hit.file, password)
        except InputError as exc:
            raise InputError(f"cannot open {hit.file} to read page {hit.page} ({exc}); re-index with `colrag index`") from exc
        try:
            if not 1 <= hit.page <= doc.page_count:
                raise InputError(f"{hit.file} has no page {hit.page} any more; re-index with `colrag index`")
            images.append(render_page(doc, hit.page - 1, RenderOptions(target_pixels=max_pixels)).image)
        finally:
            doc.close()
    return images


def _show(images, names: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="colrag-pages-"))
    for image, name in zip(images, names):
        path = folder / f"{name}.png"
        image.save(path)
        typer.echo(f"page image: {printable(path)}", err=True)


@app.command("ask")
def ask_cmd(
    question: str = typer.Argument(..., help="The question."),
    image: Optional[list[Path]] = typer.Option(
        None, "--image", help="Ask about this image file instead of the index (repeat for several images).",
    ),
    pages: int = typer.Option(1, "--pages", min=1, help="Give the model the top N retrieved pages as images."),
    as_json: bool = typer.Option(False, "--json", help='Print {"answer", "sources": [{"file", "page", "score"}]} (no streaming).'),
    show: bool = typer.Option(False, "--show", help="Write the page image(s) given to the model as PNG and print their paths on stderr."),
    index: Optional[str] = typer.Option(
        None, "--index", envvar="COLRAG_INDEX",
        help="Index name (a folder under $COLRAG_HOME/indexes) or path to an index folder \\[default: default].",
    ),
    models_dir: Optional[Path] = MODELS_DIR_OPTION,
    retriever: Optional[Path] = typer.Option(None, "--retriever", help="Retriever bundle folder \\[default: <models-dir>/retriever]."),
    generator: Optional[Path] = typer.Option(None, "--generator", help="Generator bundle folder \\[default: <models-dir>/generator]."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Stop after this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (default); > 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (when sampling)."),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Sample among the k most likely tokens; 0 = off."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", min=0.0, help="> 1 discourages repeating any token already in the prompt or answer."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed, for reproducible sampling."),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", min=4 * 28 * 28,
        help="Lower the generator's image resolution (pixels per image) for speed \\[default: the bundle's, 1280*28*28].",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, callback=check_threads_option, help="CPU threads for onnxruntime \\[default: OMP_NUM_THREADS, else all cores]."),
    backend: Optional[str] = BACKEND_OPTION,
    precision: Optional[str] = PRECISION_OPTION,
    password: Optional[str] = typer.Option(None, "--password", envvar="COLRAG_PDF_PASSWORD", help="Password of encrypted indexed PDFs."),
    stats: bool = typer.Option(False, "--stats", help="Print timings (vision, prefill, decode) on stderr."),
    cache: bool = typer.Option(
        True, "--cache/--no-cache",
        help="Keep what the model computed for the page(s) (bounded, under $COLRAG_HOME/cache/prefixes) so the next "
             "question on the same page skips the vision tower and the page's prefill.",
    ),
    interactive: bool = typer.Option(
        False, "--interactive", "-i",
        help="After the answer, read follow-up questions from stdin, one per line (an empty line or EOF ends), and answer "
             "each about the same page(s) with the models kept loaded. Each question is answered on its own, not as a conversation.",
    ),
) -> None:
    """Answer a question from the indexed pages (or about --image files), citing the pages used."""
    from ..bundle import load_manifest
    from ..errors import InputError
    from ..generator import Generator
    from ..paths import generator_dir, prefix_cache_dir
    from ..prefix_cache import PrefixCache

    if interactive and as_json:
        raise InputError("--interactive streams answers as text; it cannot be combined with --json")

    gen_bundle = _require_bundle(generator_dir(generator, models_dir), "generator", "--generator")
    cap = int(load_manifest(gen_bundle, "generator")["max_pixels"])
    if max_pixels is not None:
        cap = min(cap, max_pixels)

    if image:
        hits = []
        images = list(image)
        from ..preprocess import check_image_file

        for path in images:
            check_image_file(path)  # missing, malformed or too large: said now, from the header, before the model loads
    else:
        hits = _retrieve(question, pages, index, models_dir, retriever, threads, backend, precision)
        images = _render_hits(hits, cap, password)
        if show:
            _show(images, [f"{Path(h.file).stem}-p{h.page}" for h in hits])

    model = Generator.load(gen_bundle, threads=threads, prefix_cache=PrefixCache(folder=prefix_cache_dir()) if cache else False,
                           backend=backend, precision=precision)
    if stats:
        typer.echo("graphs: " + ", ".join(f"{graph} on {where}" for graph, where in model.runtimes.items()), err=True)
    options = dict(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                   repetition_penalty=repetition_penalty, seed=seed, max_pixels=cap)
    sources = [{"file": h.file, "page": h.page, "score": round(float(h.score), 4)} for h in hits]
    if as_json:
        result = model.generate(question, images=images, **options)
        payload = {"answer": result.text.strip(), "sources": sources}
        if image:
            payload["images"] = [str(p) for p in image]
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        if stats:
            _print_stats(result)
        return
    _stream_answer(model, question, images, options, sources, stats)
    while interactive:
        typer.echo("follow-up (empty line ends): ", err=True, nl=False)
        line = sys.stdin.readline()
        if not line.strip():
            break
        _stream_answer(model, line.strip(), images, options, sources, stats)


def _stream_answer(model, question: str, images, options: dict, sources: list[dict], stats: bool) -> None:
    """Stream one answer to stdout, then its sources."""
    from ..generator import Generation

    result = Generation()
    out = sys.stdout
    for piece in model.stream(question, images=images, result=result, **options):
        out.write(piece)
        out.flush()
    out.write("\n")
    if sources:
        out.write("\nSources:\n")
        for rank, s in enumerate(sources, 1):
            out.write(f"  [{rank}] {printable(s['file'])}, page {s['page']} (score {s['score']:.4f})\n")
    out.flush()
    if stats:
        _print_stats(result)


def _print_stats(result) -> None:
    cached = ", page prefix from cache" if result.prefix_cached else ""
    typer.echo(
        f"vision {result.vision_s:.2f}s, prefill {result.prefill_s:.2f}s ({result.n_prompt_tokens} tokens{cached}), "
        f"decode {result.decode_s:.2f}s ({result.n_new_tokens} tokens, {result.decode_tokens_per_s:.2f} tok/s), "
        f"stopped on {result.finish_reason}",
        err=True,
    )
