"""Answering an indexed page: transformers fp32, colrag computing the page features, colrag with the
features the index stored; then `colrag ask` end to end, as a user types it, with and without `colrag serve`.

    flock /tmp/colrag-heavy.lock python bench/bench_ask.py \
        --checkpoint ~/.cache/colrag-bench/qwen2vl-shared-2b-random \
        --retriever ~/.cache/colrag-bench/bundles/retriever-int8 \
        --generator ~/.cache/colrag-bench/bundles/generator-int8-shared [--runs 1]

The generator must share the retriever's vision tower (bench/full_checkpoints.py --which
qwen2vl-shared; export it with --share-vision-with the retriever bundle). One index of the
first 3 pages of a real PDF is built first (with page features; timed, peak memory of the
process); `--compare-index` also builds it with --no-page-features.

Rows (each variant in a fresh process; pages at the index's own pixel budget, 768·28·28,
rendered exactly as `colrag index` rendered them): time to the first token of "What does
the chart show?" about page 1 (vision + prefill), with the 3 pages (--top-k 3), and a
follow-up question on page 1 (page-prefix cache). transformers: vision + prefill as its
`generate` runs them. colrag computing: the generator's vision tower on the rendered page.
colrag index: `Asker` reading the stored features (retrieval excluded, reported apart).

Then wall clock of `python -m colrag ask "What does the chart show?" --max-new-tokens 24` in a new
process: a page never asked about (empty prefix cache), a follow-up in another new process
(the prefix cache on disk), and the same two with `colrag serve` running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import PDF_DIR, machine, peak_rss_gb, summary

QUESTION = "What does the chart show?"
FOLLOW_UP = "What is the title of the page?"
NEW_TOKENS = 24


def _pages(index: Path):
    """The index's pages 1-3 rendered as `colrag index` rendered them."""
    from colrag.render import open_pdf, render_page
    from colrag.store import Index

    with Index.open(index) as idx:
        snap = idx.snapshot()
        pages = sorted(snap.pages, key=lambda p: p.page_no)[:3]
        with open_pdf(pages[0].path) as doc:
            return [render_page(doc, p.page_no - 1, idx.render).image for p in pages], int(idx.manifest["max_pixels"])


def worker(args) -> None:
    index = Path(args.index)
    images, budget = _pages(index)
    out: dict = {}
    if args.worker == "torch":
        import torch
        from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        from colrag.vlm.tokenization import Tokenizer, chat_prompt_ids

        model = Qwen2VLForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
        proc = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=budget)
        tok = Tokenizer.from_dir(args.checkpoint)

        def first_token(imgs, question):
            pix = proc(images=imgs, return_tensors="pt")
            ids = chat_prompt_ids(tok, question, [int(g.prod()) // 4 for g in pix["image_grid_thw"]])
            inputs = {
                "input_ids": torch.tensor([ids]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                **pix,
            }
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            return time.perf_counter() - t0

        first_token(images[:1], QUESTION)  # warm-up
        out["one"] = [first_token(images[:1], QUESTION) for _ in range(args.runs)]
        out["three"] = [first_token(images, QUESTION) for _ in range(args.runs)]
        out["follow"] = [first_token(images[:1], FOLLOW_UP)]  # transformers has no page cache
    elif args.worker == "computed":
        import colrag
        from colrag.vlm.prefix_cache import PrefixCache

        g = colrag.Generator.load(args.generator, prefix_cache=False)

        def first_token(imgs, question):
            r = g.generate(question, imgs, max_new_tokens=1, max_pixels=budget)
            return r.vision_s + r.prefill_s

        first_token(images[:1], QUESTION)
        out["one"] = [first_token(images[:1], QUESTION) for _ in range(args.runs)]
        out["three"] = [first_token(images, QUESTION) for _ in range(args.runs)]
        g.prefix_cache = PrefixCache()
        g.generate(QUESTION, images[:1], max_new_tokens=1, max_pixels=budget)
        t0 = time.perf_counter()
        assert g.generate(FOLLOW_UP, images[:1], max_new_tokens=1, max_pixels=budget).prefix_cached
        out["follow"] = [time.perf_counter() - t0]
        r = g.generate(QUESTION, images[:1], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, max_pixels=budget)
        out["tokens"] = r.token_ids
        out["tps"] = r.decode_tokens_per_s
    else:
        from colrag.ask import Answer, Asker
        from colrag.vlm.prefix_cache import PrefixCache

        asker = Asker.open(
            index=index, retriever=args.retriever, generator=args.generator, cache=False, keep_retriever=True
        )
        asker.generator.prefix_cache = None

        def first_token(n, question):
            a = asker.ask(question, pages=n, max_new_tokens=1)
            assert all(s.features == "index" for s in a.sources), a.sources
            return a.timings.vision_s + a.timings.prefill_s, a.timings.retrieve_s, a.timings.vision_s

        first_token(1, QUESTION)
        runs = [first_token(1, QUESTION) for _ in range(args.runs)]
        out["one"] = [r[0] for r in runs]
        out["retrieve"] = [r[1] for r in runs]
        out["read_features"] = [r[2] for r in runs]
        out["three"] = [first_token(3, QUESTION)[0] for _ in range(args.runs)]
        asker.generator.prefix_cache = PrefixCache()
        prepared = asker.prepare(QUESTION, pages=1)
        for question in (QUESTION, FOLLOW_UP):  # the same page: the follow-up's prefix comes from the cache
            t0 = time.perf_counter()
            a = Answer()
            for _ in asker.stream(question, prepared, a, max_new_tokens=1):
                pass
        assert a.prefix_cached
        out["follow"] = [time.perf_counter() - t0]
        asker.generator.prefix_cache = None
        from colrag.store import Index
        from colrag.store import features as pf

        with Index.open(index) as idx:  # page 1, the page the computed row reads
            snap = idx.snapshot()
            first = min(snap.pages, key=lambda p: p.page_no)
            page_one = pf.read_hit(idx, snap, first.path, first.page_no)
        r = asker.generator.generate(QUESTION, [page_one], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        out["tokens"] = r.token_ids
        out["tps"] = r.decode_tokens_per_s
        out["runtimes"] = asker.runtimes()
    out["peak_gb"] = peak_rss_gb()
    print(json.dumps(out))


def ovgenai_command(args, index: Path, work: Path) -> list[str]:
    """bench/ovgenai_worker.py in its own Python, on the pages the colrag rows answer (saved as PNG)."""
    images, _ = _pages(index)
    paths = []
    for i, image in enumerate(images, 1):
        paths.append(str(work / f"page{i}.png"))
        image.save(paths[-1])
    worker_py = str(Path(__file__).with_name("ovgenai_worker.py"))
    return [
        args.ovgenai_python,
        worker_py,
        "--model",
        args.ovgenai_model,
        "--images",
        *paths,
        "--question",
        QUESTION,
        "--follow-up",
        FOLLOW_UP,
        "--runs",
        str(args.runs),
        "--new-tokens",
        str(NEW_TOKENS),
    ]


def build_index(pdf: Path, pages: int, retriever: str, folder: Path, features: bool) -> dict:
    import pymupdf

    docs = folder / "docs"
    docs.mkdir(parents=True)
    with pymupdf.open(pdf) as src, pymupdf.open() as dst:
        dst.insert_pdf(src, from_page=0, to_page=pages - 1)
        dst.save(docs / "doc.pdf")
    cmd = [
        sys.executable,
        "-m",
        "colrag",
        "index",
        str(docs),
        "--index",
        str(folder / "index"),
        "--retriever",
        retriever,
    ]
    if not features:
        cmd.append("--no-page-features")
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "peak-kb %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"index failed: {proc.stderr.strip()[-500:]}")
    peak = int(next(line for line in proc.stderr.splitlines() if line.startswith("peak-kb ")).split()[1])
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "colrag", "status", "--index", str(folder / "index"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    status = status.get("index", status)  # status --json nests the counts under "index" since its JSON document
    return {"wall": wall, "peak_gb": round(peak / 1e6, 2), "status": status}


def cli_wall(args, index: Path, home: Path, extra: list[str], backend: str) -> float:
    env = {**os.environ, "COLRAG_HOME": str(home), "COLRAG_BACKEND": backend}
    cmd = [
        sys.executable,
        "-m",
        "colrag",
        "ask",
        QUESTION if not extra or extra[0] != "follow" else FOLLOW_UP,
        "--index",
        str(index),
        "--retriever",
        args.retriever,
        "--generator",
        args.generator,
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--stats",
        *[e for e in extra if e != "follow"],
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ask failed: {proc.stderr.strip()[-500:]}")
    stats = [line for line in proc.stderr.splitlines() if line.startswith("load ")]
    print(f"    {' '.join(cmd[3:5])!s:40.40} {wall:6.2f} s wall | {' / '.join(stats)}", flush=True)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--retriever", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--pdf", default=str(PDF_DIR / "01_chart_paper_tracemonkey.pdf"))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument(
        "--backends", nargs="+", default=["onnxruntime", "auto"], help="colrag rows: one per COLRAG_BACKEND value"
    )
    ap.add_argument("--skip-computed", action="store_true", help="no 'computing the page features' rows")
    ap.add_argument("--skip-cli", action="store_true", help="skip the `colrag ask` wall-clock runs")
    ap.add_argument("--only-torch", action="store_true", help="only the transformers row (after the index build)")
    ap.add_argument("--compare-index", action="store_true", help="also build the index without page features")
    ap.add_argument("--ovgenai-python", help="a Python with openvino-genai (bench/ovgenai_worker.py): adds its row")
    ap.add_argument("--ovgenai-model", help="with --ovgenai-python: the optimum-intel export of --checkpoint")
    ap.add_argument("--worker", choices=["torch", "computed", "index"], help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"machine: {machine()}")
    print(f"load: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench-ask-", dir=Path.home() / ".cache" / "colrag-bench"))
    try:
        built = build_index(Path(args.pdf), 3, args.retriever, work / "with", True)
        st = built["status"]
        print(
            f"\nindex of 3 pages with page features: {built['wall']:.1f} s wall, peak RSS {built['peak_gb']} GB, "
            f"{st['pages_with_features']} pages with features, {st['feature_bytes_per_page']:,} feature bytes/page, "
            f"vectors {st['vector_bytes'] // max(1, st['pages']):,} B/page, {st['bytes_on_disk']:,} B on disk"
        )
        if args.compare_index:
            plain = build_index(Path(args.pdf), 3, args.retriever, work / "without", False)
            print(
                f"index of 3 pages without page features: {plain['wall']:.1f} s wall, peak RSS {plain['peak_gb']} GB, "
                f"{plain['status']['bytes_on_disk']:,} B on disk"
            )
        index = work / "with" / "index"
        print(f"load: {os.getloadavg()}\n")
        print(
            "| variant | first token, 1 page (s) | first token, --top-k 3 (s) | follow-up first token (s) "
            "| peak RSS (GB) |"
        )
        print("|---|---|---|---|---|")
        common = [
            "--checkpoint",
            args.checkpoint,
            "--retriever",
            args.retriever,
            "--generator",
            args.generator,
            "--index",
            str(index),
            "--runs",
            str(args.runs),
        ]
        tokens = {}
        rows = [] if args.skip_torch else [("transformers fp32 (vision + prefill)", "torch", None)]
        for backend in [] if args.only_torch else args.backends:
            if not args.skip_computed:
                rows.append((f"colrag int8 ({backend}), computing the page features", "computed", backend))
            rows.append((f"colrag int8 ({backend}), page features from the index", "index", backend))
        if args.ovgenai_python and args.ovgenai_model:
            rows.append(("openvino-genai VLMPipeline (optimum-intel int8, bf16), vision + prefill", "ovgenai", None))
        for name, kind, backend in rows:
            env = {**os.environ, **({"COLRAG_BACKEND": backend} if backend else {})}
            cmd = [sys.executable, __file__, "--worker", kind, *common]
            if kind == "ovgenai":
                cmd = ovgenai_command(args, index, work)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            tokens[f"{kind} {backend}"] = r.get("tokens")
            extra = (
                f" (retrieve {summary(r['retrieve'])} s apart; reading features {summary(r['read_features'], 3)} s)"
                if "retrieve" in r
                else ""
            )
            print(
                f"| {name} | {summary(r['one'])}{extra} | {summary(r['three'])} | {summary(r['follow'])} "
                f"| {r['peak_gb']:.1f} |",
                flush=True,
            )
            if "tps" in r:
                print(f"    decode {r['tps']:.2f} tokens/s = {1 / r['tps']:.4f} s/token", flush=True)
            if "load_s" in r:
                print(f"    pipeline load (compile) {r['load_s']:.2f} s", flush=True)
            if r.get("runtimes"):
                print(f"    runs on: {r['runtimes']}", flush=True)
        reference = next((v for v in tokens.values() if v), None)
        for variant, ids in tokens.items():
            if ids and reference:
                same = sum(a == b for a, b in zip(ids, reference, strict=True))
                print(f"greedy tokens of {variant} vs the first colrag row: {same}/{len(reference)} equal")
        print(f"load: {os.getloadavg()}\n")
        if args.skip_cli or args.only_torch:
            return

        print(
            "`python -m colrag ask ... --max-new-tokens 24` on a one-page index "
            "(so the follow-up retrieves the same page),"
        )
        print("wall clock from start to exit:")
        one = build_index(Path(args.pdf), 1, args.retriever, work / "one", True)
        print(f"  (one-page index built in {one['wall']:.1f} s)")
        index = work / "one" / "index"
        home = work / "home"
        home.mkdir()
        table = []
        for backend in args.backends:
            home = work / f"home-{backend}"
            home.mkdir()
            print(f"  backend {backend}; first a warm-up ask in this COLRAG_HOME (bundle check, compiled-model cache):")
            cli_wall(args, index, home, [], backend)
            shutil.rmtree(home / "cache" / "prefixes", ignore_errors=True)  # the page was never asked
            print("  without colrag serve:")
            new = cli_wall(args, index, home, [], backend)
            follow = cli_wall(args, index, home, ["follow"], backend)
            shutil.rmtree(home / "cache" / "prefixes", ignore_errors=True)
            print("  with colrag serve running:")
            env = {**os.environ, "COLRAG_HOME": str(home), "COLRAG_BACKEND": backend}
            server = subprocess.Popen(
                [sys.executable, "-m", "colrag", "serve", "--retriever", args.retriever, "--generator", args.generator],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                t0 = time.perf_counter()
                sock = home / "run" / "serve.sock"
                while not _alive(sock):
                    if server.poll() is not None:
                        raise SystemExit(f"serve failed: {server.stderr.read()[-500:]}")
                    time.sleep(0.2)
                print(f"    (serve ready after {time.perf_counter() - t0:.1f} s)")
                served_new = cli_wall(args, index, home, [], backend)
                served_follow = cli_wall(args, index, home, ["follow"], backend)
            finally:
                server.terminate()
                server.wait(timeout=30)
            table.append(
                f"| {backend}, models loaded by `ask` | {new:.1f} s | {follow:.1f} s |\n"
                f"| {backend}, `colrag serve` running | {served_new:.1f} s | {served_follow:.1f} s |"
            )
            print(f"load: {os.getloadavg()}")
        print("\n| `colrag ask`, 24 tokens | page never asked | follow-up, new process |\n|---|---|---|")
        print("\n".join(table))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _alive(path: Path) -> bool:
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


if __name__ == "__main__":
    main()
