"""PDF pages to RGB images (pymupdf), with a pixel budget.

Every page is rendered so that its image holds about `target_pixels` pixels
(default: 2x the retriever's max_pixels, so the retriever's own resize only ever
shrinks a little) and never more than `max_side` pixels on its long side. The
scale is computed from the page's size in points before anything is rasterised,
so a 116 cm poster or a page wrapping a 40000-px scan costs the same memory as a
letter page. /Rotate is honoured (pymupdf renders the displayed orientation).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .utf8 import fs_path
from .vlm.constants import MAX_IMAGE_FILE_PIXELS, RETRIEVER_MAX_PIXELS

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_TARGET_PIXELS = 2 * RETRIEVER_MAX_PIXELS  # ~1.2 MP: the retriever downsizes at most 2x in area
DEFAULT_MAX_SIDE = 4096  # px; a hard cap on either side whatever the page size
PDF_SUFFIX = ".pdf"
# What colrag indexes: the kinds pymupdf renders as pages and users keep reports in
# (tests/test_kinds.py indexes one of each). A folder is searched for these; a file of
# another kind given by name is refused, by name, in the report. (WebP: pymupdf cannot open it.)
DOCUMENT_KINDS = {
    ".pdf": "PDF",
    ".xps": "XPS",
    ".oxps": "XPS",
    ".epub": "EPUB",
    ".cbz": "CBZ",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
DOCUMENT_SUFFIXES = tuple(DOCUMENT_KINDS)
IMAGE_KINDS = ("PNG", "JPEG", "TIFF")  # one page per image (per frame of a TIFF), size-checked from the header
KINDS_TEXT = "PDF, XPS, EPUB and CBZ documents and PNG, JPEG and TIFF images"


class PdfError(InputError):
    """A PDF that cannot be opened at all (corrupt, encrypted, empty)."""


@dataclass(frozen=True)
class RenderOptions:
    target_pixels: int = DEFAULT_TARGET_PIXELS
    max_side: int = DEFAULT_MAX_SIDE

    def as_dict(self) -> dict:
        return {"target_pixels": self.target_pixels, "max_side": self.max_side}


def _pymupdf():
    import pymupdf

    # mupdf prints its warnings on stderr by default; we collect them per page instead.
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    return pymupdf


@dataclass
class PdfWalk:
    """What a walk over the given paths found, and what it could not see."""

    files: list[Path]  # absolute, de-duplicated, sorted
    listed: dict[str, int]  # folder (absolute) -> entries, for every folder listed successfully
    errors: list[tuple[str, str]]  # (folder, reason) for every folder that could not be listed


def walk_pdfs(paths: Iterable[str | os.PathLike]) -> PdfWalk:
    """Every PDF under the given paths: folders recursively (*.pdf, any case; links to folders
    are not followed), files as given. A path that does not exist is an InputError; a folder
    inside them that cannot be listed is recorded in `errors`, never silently skipped."""
    found: dict[Path, None] = {}
    listed: dict[str, int] = {}
    errors: list[tuple[str, str]] = []

    def failed(exc: OSError) -> None:
        errors.append((os.path.abspath(exc.filename or "?"), exc.strerror or str(exc)))

    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for root, dirs, files in os.walk(path, onerror=failed):
                listed[os.path.abspath(root)] = len(dirs) + len(files)
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(DOCUMENT_SUFFIXES):
                        found[Path(os.path.abspath(Path(root) / name))] = None
        elif path.is_file():
            found[Path(os.path.abspath(path))] = None
        else:
            raise InputError(f"no such file or folder: {raw}")
    return PdfWalk(sorted(found), listed, errors)


def find_pdfs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The PDFs of `walk_pdfs`: absolute, de-duplicated, sorted. A missing path is an InputError."""
    return walk_pdfs(paths).files


def page_scale(width_pt: float, height_pt: float, opts: RenderOptions = RenderOptions()) -> float:
    """Pixels per point so the page has ~target_pixels pixels and no side exceeds max_side."""
    if not (width_pt > 0 and height_pt > 0) or not math.isfinite(width_pt * height_pt):
        raise InputError(f"page has no usable size ({width_pt} x {height_pt} pt)")
    scale = math.sqrt(opts.target_pixels / (width_pt * height_pt))
    scale = min(scale, opts.max_side / max(width_pt, height_pt))
    return scale


def render_size(width_pt: float, height_pt: float, opts: RenderOptions = RenderOptions()) -> tuple[int, int]:
    s = page_scale(width_pt, height_pt, opts)
    return max(1, round(width_pt * s)), max(1, round(height_pt * s))


def open_pdf(path: str | os.PathLike, password: str | None = None):
    """Open a document (DOCUMENT_KINDS, by extension) with pymupdf; PdfError with a reason when it cannot be used.

    A file named with another extension is read as a PDF if it is one, and refused by its
    extension otherwise."""
    pymupdf = _pymupdf()
    path = Path(fs_path(str(path)))  # a name the catalog stored escaped (colrag.utf8) names its file again
    kind = DOCUMENT_KINDS.get(path.suffix.lower())
    refused = PdfError(f"not a kind of file colrag indexes ({path.suffix or 'no extension'}): it indexes {KINDS_TEXT}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PdfError(f"cannot read: {exc.strerror or exc}") from exc
    if size == 0:
        raise PdfError("empty file (0 bytes)")
    if kind in IMAGE_KINDS:
        _check_image_size(path)
    pymupdf.TOOLS.reset_mupdf_warnings()
    try:
        doc = _open(pymupdf, path, (kind or "PDF").lower())
    except PdfError:
        raise
    except Exception as exc:  # pymupdf raises FileDataError / RuntimeError / ValueError on damaged files
        if kind is None:
            raise refused from exc
        raise PdfError(f"not a readable {kind}{'' if kind == 'PDF' else ' file'} ({exc})") from exc
    if doc.needs_pass:
        if password is None:
            doc.close()
            raise PdfError("encrypted: it needs a password (pass it with --password)")
        if not doc.authenticate(password):
            doc.close()
            raise PdfError("encrypted: the password given does not open it")
    if doc.page_count == 0:
        warnings = _warnings(pymupdf)
        doc.close()
        if kind is None:
            raise refused
        raise PdfError("no pages" + (f" (damaged or truncated: {warnings})" if warnings else ""))
    return doc


def _check_image_size(path: Path, limit: int = MAX_IMAGE_FILE_PIXELS) -> None:
    """An image file's size from its header (every frame of a TIFF), before mupdf decodes it: mupdf
    decodes an image document at full size whatever the page is rendered at (a 28000x28000 1-bit
    PNG of 95 KB takes 1 GB), so one over `limit` pixels (as for `ask --image`) is refused."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                for frame in range(getattr(img, "n_frames", 1)):
                    img.seek(frame)
                    width, height = img.size
                    if width * height > limit:
                        raise PdfError(
                            f"image too large ({width}x{height} = {width * height:,} pixels; "
                            f"colrag indexes images up to {limit:,})"
                        )
    except Image.DecompressionBombError:
        raise PdfError(f"image too large (colrag indexes images up to {limit:,} pixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error):
        return  # a header Pillow cannot read: mupdf says whether it is an image at all


def _open(pymupdf, path: Path, filetype: str):
    """pymupdf.open; mupdf takes UTF-8 file names only, so a name that is not (a Latin-1 name on
    a UTF-8 system) is opened here and given to it as /proc/self/fd/N (mupdf opens its own copy)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.path.exists(f"/proc/self/fd/{fd}"):
                return pymupdf.open(f"/proc/self/fd/{fd}", filetype=filetype)
        finally:
            os.close(fd)
        raise PdfError("its file name is not valid UTF-8, which the PDF library cannot open: rename it") from None
    return pymupdf.open(path, filetype=filetype)


def _warnings(pymupdf) -> str:
    text = pymupdf.TOOLS.mupdf_warnings(reset=True) or ""
    lines = [line for line in text.splitlines() if line and not line.startswith("... repeated")]
    return "; ".join(dict.fromkeys(lines))[:300]


def page_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or hostile page makes pymupdf / PIL raise while rendering (anything else is a bug)."""
    pymupdf = _pymupdf()
    from PIL import Image

    return (RuntimeError, ValueError, OSError, InputError, pymupdf.mupdf.FzErrorBase, Image.DecompressionBombError)


@dataclass
class RenderedPage:
    number: int  # 1-based
    image: Image.Image  # RGB
    warnings: str  # what mupdf complained about while rendering ('' when nothing)


def render_page(doc, index: int, opts: RenderOptions = RenderOptions()) -> RenderedPage:
    """Render page `index` (0-based) of an open document to an RGB PIL image."""
    from PIL import Image

    pymupdf = _pymupdf()
    pymupdf.TOOLS.reset_mupdf_warnings()
    page = doc.load_page(index)
    rect = page.rect  # the displayed page: /Rotate and the cropbox applied
    scale = page_scale(rect.width, rect.height, opts)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), colorspace=pymupdf.csRGB, alpha=False)
    image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    return RenderedPage(number=index + 1, image=image, warnings=_warnings(pymupdf))


def iter_pages(
    doc, opts: RenderOptions = RenderOptions(), start: int = 0
) -> Iterator[RenderedPage | tuple[int, Exception]]:
    """Render pages one at a time; a page that fails yields (page_number, exception)."""
    for i in range(start, doc.page_count):
        try:
            yield render_page(doc, i, opts)
        except Exception as exc:  # one bad page must not stop the document
            yield (i + 1, exc)


def render_pdf(path: str | os.PathLike, opts: RenderOptions = RenderOptions(), password: str | None = None) -> list:
    """All pages of one PDF (convenience for small files and tests)."""
    doc = open_pdf(path, password)
    try:
        return list(iter_pages(doc, opts))
    finally:
        doc.close()
