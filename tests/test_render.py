"""Rendering: pixel budget, rotation, hostile files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from colrag.errors import InputError
from colrag.render import (
    DEFAULT_MAX_SIDE,
    DEFAULT_TARGET_PIXELS,
    PdfError,
    RenderOptions,
    find_pdfs,
    open_pdf,
    page_scale,
    render_pdf,
    render_size,
)
from tests.index_helpers import SHARED_PDFS, make_pdf

pymupdf = pytest.importorskip("pymupdf")


def shared_pdf(name: str, tmp_path):
    src = SHARED_PDFS / name
    if not src.is_file():
        pytest.skip(f"{SHARED_PDFS} is absent")
    return shutil.copy(src, tmp_path / name)


def test_find_pdfs_recurses_sorts_and_accepts_files(tmp_path):
    make_pdf(tmp_path / "b" / "deep" / "x.PDF", 1)
    make_pdf(tmp_path / "a.pdf", 1)
    (tmp_path / "notes.txt").write_text("not a pdf")
    single = make_pdf(tmp_path / "elsewhere" / "single.bin", 1)
    found = find_pdfs([tmp_path / "b", tmp_path / "a.pdf", single, tmp_path / "a.pdf"])
    assert found == sorted(found)
    assert {p.name for p in found} == {"a.pdf", "x.PDF", "single.bin"}
    assert all(p.is_absolute() for p in found)
    with pytest.raises(InputError, match="no such file"):
        find_pdfs([tmp_path / "missing"])


@pytest.mark.parametrize(
    "w,h",
    [(612, 792), (792, 612), (3300, 3300), (3, 3), (30000, 200), (14400, 14400)],
)
def test_pixel_budget(w, h):
    opts = RenderOptions()
    pw, ph = render_size(w, h, opts)
    assert max(pw, ph) <= DEFAULT_MAX_SIDE
    assert pw * ph <= DEFAULT_TARGET_PIXELS * 1.01
    if max(w, h) / min(w, h) < 3:  # ordinary shapes get about the whole budget
        assert pw * ph >= DEFAULT_TARGET_PIXELS * 0.98
    assert page_scale(w, h, opts) > 0


def test_page_without_size_is_refused():
    with pytest.raises(InputError):
        page_scale(0, 100)


def test_render_three_distinct_pages(tmp_path):
    pdf = make_pdf(tmp_path / "three.pdf", 3, "three")
    pages = render_pdf(pdf)
    assert [p.number for p in pages] == [1, 2, 3]
    arrays = [np.asarray(p.image) for p in pages]
    for p, a in zip(pages, arrays, strict=True):
        assert p.image.mode == "RGB" and a.shape[2] == 3
        assert a.shape[0] * a.shape[1] <= DEFAULT_TARGET_PIXELS * 1.01
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[1], arrays[2])


def test_poster_page_stays_in_budget(tmp_path):
    pdf = make_pdf(tmp_path / "poster.pdf", 1, "poster", size=(3300, 3300))  # a 116 cm square poster
    (page,) = render_pdf(pdf)
    w, h = page.image.size
    assert w == h and w * h <= DEFAULT_TARGET_PIXELS * 1.01 and max(w, h) <= DEFAULT_MAX_SIDE


def test_rotate_is_honoured(tmp_path):
    pdf = make_pdf(tmp_path / "portrait.pdf", 1, "rot", size=(400, 800))
    doc = pymupdf.open(pdf)
    doc[0].set_rotation(90)
    doc.save(tmp_path / "rotated.pdf")
    doc.close()
    (page,) = render_pdf(tmp_path / "rotated.pdf")
    w, h = page.image.size
    assert w > h  # a portrait page turned by /Rotate 90 displays as landscape


def test_encrypted_needs_password(tmp_path):
    src = make_pdf(tmp_path / "plain.pdf", 2, "secret")
    doc = pymupdf.open(src)
    doc.save(tmp_path / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="s3cret", owner_pw="owner")
    doc.close()
    with pytest.raises(PdfError, match="password"):
        open_pdf(tmp_path / "locked.pdf")
    with pytest.raises(PdfError, match="does not open"):
        open_pdf(tmp_path / "locked.pdf", password="wrong")
    assert len(render_pdf(tmp_path / "locked.pdf", password="s3cret")) == 2


def test_damaged_files_are_refused_with_a_reason(tmp_path):
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "garbage.pdf").write_bytes(b"this is not a pdf at all" * 10)
    good = make_pdf(tmp_path / "good.pdf", 5, "good").read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(good[: len(good) // 3])
    with pytest.raises(PdfError, match="empty"):
        open_pdf(tmp_path / "empty.pdf")
    with pytest.raises(PdfError):
        open_pdf(tmp_path / "garbage.pdf")
    try:  # mupdf may repair a truncated file into fewer pages; it must not crash
        pages = render_pdf(tmp_path / "truncated.pdf")
        assert len(pages) <= 5
    except PdfError:
        pass


def test_shared_hostile_pdfs(tmp_path):
    enc = shared_pdf("14_encrypted_user_password.pdf", tmp_path)
    with pytest.raises(PdfError, match="password"):
        open_pdf(enc)
    with pytest.raises(PdfError, match="empty"):
        open_pdf(shared_pdf("18_zero_bytes.pdf", tmp_path))
    with pytest.raises(PdfError, match="no pages"):
        open_pdf(shared_pdf("17_zero_pages_valid.pdf", tmp_path))
    (rotated,) = render_pdf(shared_pdf("12_rotated90_nics_table.pdf", tmp_path))
    assert rotated.image.size[1] > rotated.image.size[0]  # mediabox is landscape, /Rotate 90 shows it portrait
    (corrupt,) = render_pdf(shared_pdf("15_corrupt_flate_stream.pdf", tmp_path))
    assert "zlib" in corrupt.warnings  # rendered, with the damage noted
    tiny = render_pdf(shared_pdf("21_tiny_pages_3x3pt.pdf", tmp_path))
    assert len(tiny) == 10 and all(p.image.size[0] * p.image.size[1] <= DEFAULT_TARGET_PIXELS * 1.01 for p in tiny)
