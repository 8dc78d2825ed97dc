"""The kinds of file colrag indexes: PDF, XPS, EPUB, CBZ, PNG, JPEG, TIFF — one test each — and
a file of another kind given by name is refused, by name."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from colrag.indexer import Indexer
from colrag.render import DOCUMENT_KINDS, open_pdf, render_page
from colrag.store import Index, RetrieverInfo
from tests.index_helpers import FakeRetriever, make_pdf


def image(path: Path, fmt: str, color=(20, 120, 200)) -> Path:
    from PIL import Image

    img = Image.new("RGB", (400, 300), (255, 255, 255))
    img.paste(color, (50, 50, 250, 200))
    img.save(path, fmt)
    return path


def cbz(path: Path, tmp: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for i, color in enumerate([(200, 0, 0), (0, 0, 200)]):
            z.write(image(tmp / f"p{i}.png", "PNG", color), f"{i:03d}.png")
    return path


def epub(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" '
            'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile '
            'full-path="content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        z.writestr(
            "content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0" '
            'unique-identifier="id"><metadata '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>T</dc:title><dc:identifier '
            'id="id">x</dc:identifier><dc:language>en</dc:language></metadata><manifest><item id="c1" '
            'href="c1.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref '
            'idref="c1"/></spine></package>',
        )
        z.writestr(
            "c1.xhtml",
            '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>c</title></head><body>'
            + "<p>Energy use by region, chapter one.</p>" * 60
            + "</body></html>",
        )
    return path


def xps(path: Path) -> Path:
    ns = "http://schemas.microsoft.com/xps/2005/06"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="utf-8"?><Types '
            'xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default '
            'Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default '
            'Extension="fdseq" '
            'ContentType="application/vnd.ms-package.xps-fixeddocumentsequence+xml"/><Default '
            'Extension="fdoc" ContentType="application/vnd.ms-package.xps-fixeddocument+xml"/><Default '
            'Extension="fpage" ContentType="application/vnd.ms-package.xps-fixedpage+xml"/></Types>',
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0" encoding="utf-8"?><Relationships '
            'xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship '
            'Type="http://schemas.microsoft.com/xps/2005/06/fixedrepresentation" '
            'Target="/FixedDocSeq.fdseq" Id="R0"/></Relationships>',
        )
        z.writestr(
            "FixedDocSeq.fdseq",
            f'<FixedDocumentSequence xmlns="{ns}"><DocumentReference '
            'Source="/Documents/1/FixedDoc.fdoc"/></FixedDocumentSequence>',
        )
        z.writestr(
            "Documents/1/FixedDoc.fdoc",
            f'<FixedDocument xmlns="{ns}"><PageContent Source="/Documents/1/Pages/1.fpage"/><PageContent '
            'Source="/Documents/1/Pages/2.fpage"/></FixedDocument>',
        )
        for i, color in ((1, "#FF0000"), (2, "#0000FF")):
            z.writestr(
                f"Documents/1/Pages/{i}.fpage",
                f'<FixedPage Width="816" Height="1056" xmlns="{ns}" xml:lang="en-US"><Path Data="M 100,100 L '
                f'500,100 L 500,400 L 100,400 Z" Fill="{color}"/></FixedPage>',
            )
    return path


def build(kind: str, folder: Path) -> tuple[Path, int]:
    """One file of `kind` and its number of pages."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "pdf":
        return make_pdf(folder / "a.pdf", 2, "a"), 2
    if kind == "xps":
        return xps(folder / "a.xps"), 2
    if kind == "epub":
        import pymupdf

        path = epub(folder / "a.epub")
        with pymupdf.open(path) as doc:
            return path, doc.page_count  # reflowed by mupdf's layout: several pages
    if kind == "cbz":
        scratch = folder.parent / "cbz-pages"
        scratch.mkdir(exist_ok=True)
        return cbz(folder / "a.cbz", scratch), 2
    fmt = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}[kind]
    return image(folder / f"a.{kind}", fmt), 1


@pytest.mark.parametrize("kind", ["pdf", "xps", "epub", "cbz", "png", "jpeg", "tiff"])
def test_each_kind_is_indexed(kind, tmp_path):
    path, n_pages = build(kind, tmp_path / "docs")
    assert path.suffix in DOCUMENT_KINDS and n_pages >= 1
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as idx:
        report = Indexer(idx, retriever).run([tmp_path / "docs"])  # found by the folder walk
        pages = sorted(p.page_no for p in idx.snapshot().pages)
    assert report.ok and report.indexed_files == 1, report.failures
    assert pages == list(range(1, n_pages + 1))
    with open_pdf(path) as doc:  # the page is a real picture, not a blank
        pixels = np.asarray(render_page(doc, 0).image)
    assert pixels.std() > 10


def test_other_kinds_are_refused_by_name(tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1, "a")
    (docs / "notes.docx").write_bytes(b"PK\x03\x04 not really")
    image(docs / "photo.webp", "WEBP")  # pymupdf cannot open WebP: not collected from a folder
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as idx:
        report = Indexer(idx, retriever).run([docs])
        assert report.ok and report.files == 1
        report = Indexer(idx, retriever).run([docs / "notes.docx", docs / "photo.webp"])  # named: refused by name
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert set(reasons) == {"notes.docx", "photo.webp"}
    assert reasons["notes.docx"].startswith("not a kind of file colrag indexes (.docx): it indexes PDF, XPS, EPUB")


def test_a_pdf_named_otherwise_is_still_read(tmp_path):
    disguised = make_pdf(tmp_path / "report.bin", 2, "r")
    with open_pdf(disguised) as doc:
        assert doc.page_count == 2
