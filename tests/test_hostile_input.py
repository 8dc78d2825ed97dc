"""Hostile input gets one clear line, never a traceback or a memory blow-up: oversized and
malformed images, over-long questions, absurd thread counts, file names that forge output."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colrag.errors import InputError
from tests.cli_helpers import run_colrag as _colrag
from tests.index_helpers import FakeRetriever, make_pdf

ROOT = Path(__file__).resolve().parents[1]


def _one_line(text: str) -> bool:
    return text.count("\n") == 1 and "Traceback" not in text


# -- images (item 11) ---------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_1bit(path: Path, width: int, height: int, *, full_data: bool) -> Path:
    """A black-and-white PNG: with full_data its pixels are all there (compressing to a few KB)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    raw = (b"\0" + b"\0" * ((width + 7) // 8)) * (height if full_data else 1)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    )
    return path


def test_oversized_image_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import ImageFile

    from colrag.vlm.preprocess import load_image

    limit = Image.MAX_IMAGE_PIXELS

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    big = _png_1bit(tmp_path / "big.png", 10_000, 10_000, full_data=True)  # 100 Mpx in 12 KB
    with pytest.raises(InputError, match=r"too large \(10000x10000 = 100,000,000 pixels; the limit is 64,000,000\)"):
        load_image(big)
    bomb = _png_1bit(tmp_path / "bomb.png", 28_000, 28_000, full_data=False)  # the 784 Mpx
    with pytest.raises(InputError, match="too large"):
        load_image(bomb)
    assert limit == Image.MAX_IMAGE_PIXELS  # Pillow's global limit is left alone


MALFORMED = [
    b"P6\n",
    b"P6\n10 10\n",
    b"P6\n10 10\n255\n",
    b"P6\n-1 10\n255\n",
    b"P6\n10 10\n0\n",
    b"P6\n10 10\n70000\n",
    b"P6\nx 10\n255\n",
    b"P6\n10\xff 10\n255\n",
    b"P5\n99999999 99999999\n255\n",
    b"P1\n3 3\n1 0 2\n",
    b"P2\n2 2\n255\n1 2 x 4\n",
    b"P3\n1 1\n255\n256 0 0\n",
    b"P6\n#" + b"a" * 5000,
    b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
    b"GIF89a\x01",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"not an image at all",
]


def test_malformed_images_are_one_line_errors(tmp_path):
    from colrag.vlm.preprocess import load_image

    for i, data in enumerate(MALFORMED):
        path = tmp_path / f"bad-{i}.ppm"
        path.write_bytes(data)
        with pytest.raises(InputError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (data[:20], message)


def test_large_images_are_decoded_at_a_reduced_scale(tmp_path):
    from colrag.vlm.preprocess import open_image

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.jpg", quality=80)
    photo.convert("L").save(tmp_path / "scan.png", compress_level=1)
    target = 200 * 28 * 28  # about 457x343 at 4:3
    for name in ("photo.jpg", "scan.png"):
        image = open_image(tmp_path / name, target_pixels=target)
        assert image.size == (1000, 750), name  # JPEG draft 1/4, PNG reduce(4)
        assert image.width >= 2 * 457 and image.height >= 2 * 343  # still twice what the model reads
    assert open_image(tmp_path / "photo.jpg").size == (4000, 3000)  # no target: full size


def test_ask_refuses_a_bad_image_before_loading_the_model(tiny_generator_bundle, tmp_path):
    bad = tmp_path / "page.ppm"
    bad.write_bytes(b"P6\n10 10\n70000\n")
    r = _colrag("ask", "--image", bad, "--generator", tiny_generator_bundle, "What is shown?", home=tmp_path / "home")
    assert r.returncode == 2 and _one_line(r.stderr) and "cannot read image" in r.stderr, r.stderr


# -- token caps (item 12) ------------------------------------------------------------------


def test_long_query_is_refused_with_the_limit(tiny_retriever_bundle):
    import colrag

    retriever = colrag.Retriever.load(tiny_retriever_bundle, threads=1)
    with pytest.raises(InputError, match="the limit is 512 tokens"):
        retriever.embed_queries(["revenue " * 600])
    assert len(retriever.embed_queries(["revenue " * 400])[0]) > 400  # under the limit: fine


def test_huge_query_is_refused_before_the_model_runs(tiny_retriever_bundle):
    import colrag

    retriever = colrag.Retriever.load(tiny_retriever_bundle, threads=1)
    with pytest.raises(InputError, match="the limit is 512 tokens"):
        retriever.embed_queries(["Lorem ipsum dolor sit amet. " * 3600])  # 100,000 characters


def test_long_prompt_is_refused_with_the_limit(tiny_generator_bundle):
    import colrag
    from colrag.vlm.constants import MAX_PROMPT_TOKENS

    gen = colrag.Generator.load(tiny_generator_bundle, threads=1, prefix_cache=False)
    assert gen.max_prompt_tokens == MAX_PROMPT_TOKENS == 8192
    gen.max_prompt_tokens = 300
    image = Image.new("RGB", (224, 224), "white")  # 64 image tokens
    with pytest.raises(
        InputError, match=r"the prompt is \d+ tokens long .*64 for 1 image\(s\)\); the limit is 300 tokens"
    ):
        gen.generate("why " * 280, images=[image], max_new_tokens=2)
    assert gen.generate("why " * 100, images=[image], max_new_tokens=2).n_prompt_tokens <= 300


def test_ask_with_a_100k_character_question_is_one_line(tiny_generator_bundle, tmp_path):
    img = tmp_path / "page.png"
    Image.new("RGB", (100, 100), "white").save(img)
    question = "Lorem ipsum dolor sit amet. " * 3600
    r = _colrag("ask", "--image", img, "--generator", tiny_generator_bundle, question, home=tmp_path / "home")
    assert r.returncode == 2 and _one_line(r.stderr) and "the limit is 8,192 tokens" in r.stderr, r.stderr[:500]


# -- threads (item 13) --------------------------------------------------------------------


def test_absurd_thread_counts_are_refused(tmp_path, monkeypatch):
    from colrag.vlm.runtime import configured_threads, max_threads

    assert max_threads() >= 4
    assert configured_threads(max_threads()) == max_threads()
    with pytest.raises(InputError, match=rf"--threads 3000 is too many.*the limit is {max_threads()} threads"):
        configured_threads(3000)
    monkeypatch.setenv("OMP_NUM_THREADS", "3000")  # set for other programs too: clamped, not refused
    assert configured_threads() == max_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1)
    for cmd in (["index", docs], ["search", "x"], ["ask", "--image", tmp_path / "missing.png", "q"]):
        r = _colrag(*cmd, "--threads", "3000", home=tmp_path / "home")
        assert r.returncode == 2 and _one_line(r.stderr) and "--threads 3000 is too many" in r.stderr, (cmd, r.stderr)


# -- printed file names (item 14) ------------------------------------------------------------


def test_printable_escapes_what_could_forge_output():
    from colrag.cli.output import printable

    assert printable("report 2024 (final) é 日本.pdf") == "report 2024 (final) é 日本.pdf"
    assert printable("a.pdf\n1\t0.99\tforged.pdf") == "a.pdf\\n1\\t0.99\\tforged.pdf"
    assert printable("x\x1b[2Jy\r\x00") == "x\\x1b[2Jy\\r\\x00"
    assert printable("evil\u202efdp.exe") == "evil\\u202efdp.exe"  # right-to-left override
    assert printable("caf" + "\udce9" + ".pdf") == "caf\\xe9.pdf"  # a byte that was not UTF-8
    assert printable("line\u2028sep") == "line\\u2028sep"


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_status_and_remove_do_not_print_raw_control_characters(tmp_path):
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo

    docs = tmp_path / "docs"
    evil = "bad\nfailed     forged.pdf: \x1b[31mhacked.pdf"
    (docs).mkdir()
    (docs / evil).write_bytes(b"%PDF-1.4 broken")
    make_pdf(docs / "good\tname.pdf", 1)
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        Indexer(index, retriever).run([docs])
    home = tmp_path / "home"
    r = _colrag("status", "--index", tmp_path / "ix", home=home)
    failed = [line for line in r.stdout.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "bad\\nfailed" in failed[0] and "\x1b" not in r.stdout
    r = _colrag("status", "--index", tmp_path / "ix", "--json", home=home)
    assert {f["file"] for f in json.loads(r.stdout)["failures"]} == {str(docs / evil)}  # JSON stays exact
    r = _colrag("remove", docs / "good\tname.pdf", "--index", tmp_path / "ix", home=home)
    assert r.returncode == 0 and r.stdout == f"removed {docs}/good\\tname.pdf\n", r.stdout


def test_search_results_cannot_be_forged_by_a_file_name(tiny_retriever_bundle, tmp_path):
    docs = tmp_path / "docs"
    name = "a\n1\t0.9999\tforged.pdf\tpage 1.pdf"
    make_pdf(docs / name, 2, "report")
    ix, home = tmp_path / "ix", tmp_path / "home"
    r = _colrag("index", docs, "--index", ix, "--retriever", tiny_retriever_bundle, "--threads", "1", home=home)
    assert r.returncode == 0, r.stderr
    r = _colrag("search", "report", "--index", ix, "--retriever", tiny_retriever_bundle, "--top-k", "5", home=home)
    lines = r.stdout.splitlines()
    assert (
        r.returncode == 0
        and len(lines) == 2
        and all("a\\n1\\t0.9999\\tforged.pdf\\tpage 1.pdf\tpage" in line for line in lines)
    ), r.stdout
    r = _colrag("search", "report", "--index", ix, "--retriever", tiny_retriever_bundle, "--json", home=home)
    assert {h["file"] for h in json.loads(r.stdout)["results"]} == {str(docs / name)}
