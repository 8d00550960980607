"""Tests for appliance.core.documents: format sniffing, page counting, colour.

Sample files come from tests/fixtures/documents/ (see its README.md); the
trickier PDF structures (incremental updates, hybrid files, broken files) and
the binary formats' corner cases are built here.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core import documents
from appliance.core.documents import (
    CUPS_RASTER,
    JPEG,
    OCTET_STREAM,
    PCL,
    PCLXL,
    PDF,
    PNG,
    POSTSCRIPT,
    PWG_RASTER,
    URF,
    DocumentInfo,
    analyse,
    count_pages,
    detect_colour,
    sniff_format,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "documents"
UEL = b"\x1b%-12345X"
HAVE_GS = shutil.which("gs") is not None
# ghostscript comes from `make setup`: without it these tests fail rather than skip.
needs_gs = pytest.mark.integration


def fixture(name: str) -> Path:
    return FIXTURES / name


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------------------
# Fixture files: exact page counts, format and cheap colour
# ---------------------------------------------------------------------------

# name -> (format, pages from count_pages, colour from count_pages)
EXPECTED: dict[str, tuple[str, int | None, bool | None]] = {
    "mixed5.ps": (POSTSCRIPT, 5, None),
    "mono3.ps": (POSTSCRIPT, 3, None),
    "atend4.ps": (POSTSCRIPT, 4, None),
    "embedded2.ps": (POSTSCRIPT, 2, None),
    "nodsc3.ps": (POSTSCRIPT, None, None),
    "mixed5-ps2write.ps": (POSTSCRIPT, 5, None),
    "mono3-ps2write.ps": (POSTSCRIPT, 3, None),
    "mixed5.pdf": (PDF, 5, None),
    "mono3.pdf": (PDF, 3, None),
    "mixed5-objstm.pdf": (PDF, 5, None),
    "mixed5-linearized.pdf": (PDF, 5, None),
    "mono3-linearized-objstm.pdf": (PDF, 3, None),
    "mono3-encrypted.pdf": (PDF, 3, None),
    "mixed5-encrypted-objstm.pdf": (PDF, 5, None),
    "mono3-aes128-objstm.pdf": (PDF, 3, None),
    "mono3-rc4-objstm.pdf": (PDF, 3, None),
    "mixed5-rc4-40-objstm.pdf": (PDF, 5, None),
    "mixed5-userpw.pdf": (PDF, 5, None),
    "mixed5-userpw-objstm.pdf": (PDF, None, None),
    "mixed5-pxlmono.pxl": (PCLXL, 5, False),
    "mixed5-pxlcolor.pxl": (PCLXL, 5, True),
    "mono3-pxlmono.pxl": (PCLXL, 3, False),
    "mono3-pxlcolor.pxl": (PCLXL, 3, False),
    "mixed5-sgray.pwg": (PWG_RASTER, 5, False),
    "mixed5-srgb.pwg": (PWG_RASTER, 5, True),
    "mono3-sgray.pwg": (PWG_RASTER, 3, False),
    "mono3-srgb.pwg": (PWG_RASTER, 3, True),
    "mono3.urf": (URF, 3, False),
}


def test_every_fixture_is_covered_and_small() -> None:
    files = {p.name for p in FIXTURES.iterdir() if p.name != "README.md"}
    assert files == set(EXPECTED)
    for name in files:
        assert fixture(name).stat().st_size < 200_000, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_counts(name: str) -> None:
    fmt, pages, colour = EXPECTED[name]
    assert count_pages(fixture(name)) == DocumentInfo(fmt, pages, colour)
    # the declared format does not matter when the content is recognisable
    assert count_pages(fixture(name), OCTET_STREAM) == DocumentInfo(fmt, pages, colour)
    assert count_pages(str(fixture(name)), "text/plain") == DocumentInfo(fmt, pages, colour)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_sniffing(name: str) -> None:
    head = fixture(name).read_bytes()[:4096]
    assert sniff_format(head) == EXPECTED[name][0]


def test_count_pages_never_runs_a_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("count_pages ran a subprocess")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    for name, (fmt, pages, colour) in EXPECTED.items():
        assert count_pages(fixture(name)) == DocumentInfo(fmt, pages, colour)


def test_declared_format_disagreeing_with_content(tmp_path: Path) -> None:
    assert count_pages(fixture("mixed5.pdf"), POSTSCRIPT) == DocumentInfo(PDF, 5, None)
    assert count_pages(fixture("mixed5.ps"), PDF) == DocumentInfo(POSTSCRIPT, 5, None)
    assert count_pages(fixture("mono3-sgray.pwg"), "application/PDF") == DocumentInfo(
        PWG_RASTER, 3, False
    )
    # unrecognisable content: the declared type is reported, normalised
    junk = write(tmp_path, "junk.bin", b"\x00\x01 not a document")
    assert count_pages(junk, "Application/PDF; x=y") == DocumentInfo(PDF, None, None)
    assert count_pages(junk, "image/pwg-raster") == DocumentInfo(PWG_RASTER, None, None)


def test_unknown_formats(tmp_path: Path) -> None:
    text = write(tmp_path, "a.txt", b"hello, world\nsecond line\n")
    assert sniff_format(text.read_bytes()) is None
    assert count_pages(text) == DocumentInfo(OCTET_STREAM, None, None)
    assert count_pages(text, OCTET_STREAM) == DocumentInfo(OCTET_STREAM, None, None)
    assert count_pages(text, "text/plain") == DocumentInfo("text/plain", None, None)
    empty = write(tmp_path, "empty", b"")
    assert count_pages(empty) == DocumentInfo(OCTET_STREAM, None, None)
    assert count_pages(empty, PDF) == DocumentInfo(PDF, None, None)
    pcl5 = write(tmp_path, "a.pcl", b"\x1bE\x1b&l0O hello \x0c\x1bE")
    assert count_pages(pcl5) == DocumentInfo(PCL, None, None)


def test_missing_file_raises() -> None:
    with pytest.raises(OSError):
        count_pages("/nonexistent/outpost/document.pdf")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", PDF),
        (b"%!PS-Adobe-3.0\n", POSTSCRIPT),
        (b"\x04%!PS\n", POSTSCRIPT),
        (b"\xc5\xd0\xd3\xc6\x1e\x00\x00\x00", POSTSCRIPT),
        (b"RaS2PwgRaster\x00", PWG_RASTER),
        (b"2SaR", CUPS_RASTER),
        (b"RaS3", CUPS_RASTER),
        (b"UNIRAST\x00\x00\x00\x00\x01", URF),
        (b") HP-PCL XL;2;0;\n", PCLXL),
        (b"( HP-PCL XL;2;0;\n", PCLXL),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", JPEG),
        (b"\x89PNG\r\n\x1a\n\x00\x00", PNG),
        (b"\x1bE\x1b&l0O", PCL),
        (UEL + b"@PJL JOB\r\n@PJL ENTER LANGUAGE=POSTSCRIPT\r\n%!PS\n", POSTSCRIPT),
        (UEL + b"@PJL ENTER LANGUAGE = PDF\n%PDF-1.4\n", PDF),
        (UEL + b"@PJL SET RESOLUTION=600\n@PJL ENTER LANGUAGE = PCLXL\n) HP-PCL XL;", PCLXL),
        (UEL + b"@PJL ENTER LANGUAGE=POSTSCRIPT\n", POSTSCRIPT),  # body not seen yet
        (UEL + b"@PJL COMMENT only\n", None),
        (b"garbage before the header\n%PDF-1.4\n", PDF),
        (b"", None),
        (b"%", None),
        (b"PK\x03\x04", None),
        (b"hello world", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


# ---------------------------------------------------------------------------
# PDF helpers (independent of the module under test)
# ---------------------------------------------------------------------------


def pdf_objects(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(number, body) of every object, including those inside object streams."""
    for m in re.finditer(rb"(\d+) (\d+) obj(.*?)endobj", data, re.S):
        num, body = int(m.group(1)), m.group(3)
        yield num, body
        if b"/ObjStm" not in body:
            continue
        head, _, rest = body.partition(b"stream")
        rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:]
        length = int(re.search(rb"/Length (\d+)", head).group(1))  # type: ignore[union-attr]
        first = int(re.search(rb"/First (\d+)", head).group(1))  # type: ignore[union-attr]
        dec = zlib.decompress(rest[:length])
        nums = [int(x) for x in dec[:first].split()]
        pairs = list(zip(nums[::2], nums[1::2], strict=True))
        for i, (onum, off) in enumerate(pairs):
            end = pairs[i + 1][1] if i + 1 < len(pairs) else len(dec) - first
            yield onum, dec[first + off : first + end]


def pdf_page_objects(data: bytes) -> list[int]:
    latest = dict(pdf_objects(data))
    return sorted(n for n, body in latest.items() if re.search(rb"/Type\s*/Page(?![a-zA-Z])", body))


def pdf_root(data: bytes) -> int:
    return int(re.findall(rb"/Root (\d+) 0 R", data)[-1])


def pdf_size(data: bytes) -> int:
    return int(re.findall(rb"/Size (\d+)", data)[-1])


def pdf_startxref(data: bytes) -> int:
    return int(re.findall(rb"startxref\s+(\d+)", data)[-1])


def append_update(
    data: bytes,
    objects: dict[int, bytes],
    *,
    free: tuple[int, ...] = (),
    root: int,
    size: int,
    xref_stream: bool = False,
) -> bytes:
    """Append an incremental update (classic xref table or xref stream)."""
    out = bytearray(data)
    if not out.endswith(b"\n"):
        out += b"\n"
    prev = pdf_startxref(data)
    offsets: dict[int, int] = {}
    for num, body in objects.items():
        offsets[num] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (num, body)
    xref_at = len(out)
    if not xref_stream:
        out += b"xref\n"
        rows = [(n, b"%010d 00000 n \n" % off) for n, off in offsets.items()]
        rows += [(n, b"0000000000 00001 f \n") for n in free]
        for n, row in sorted(rows):
            out += b"%d 1\n" % n + row
        out += b"trailer\n<< /Size %d /Root %d 0 R /Prev %d >>\n" % (size, root, prev)
    else:
        xnum = size
        size += 1
        offsets[xnum] = xref_at
        entries = {n: (1, off, 0) for n, off in offsets.items()}
        entries.update({n: (0, 0, 1) for n in free})
        raw = bytearray()
        prev_row = bytes(7)
        index: list[int] = []
        for n in sorted(entries):
            kind, a, b = entries[n]
            row = struct.pack(">BIH", kind, a, b)
            raw += b"\x02" + bytes((x - y) & 0xFF for x, y in zip(row, prev_row, strict=True))
            prev_row = row
            index += [n, 1]
        stream = zlib.compress(bytes(raw))
        out += (
            b"%d 0 obj\n<< /Type /XRef /Size %d /Root %d 0 R /Prev %d /W [1 4 2] /Index [%s]"
            b" /Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 7 >>"
            b" /Length %d >>\nstream\n"
            % (xnum, size, root, prev, b" ".join(b"%d" % i for i in index), len(stream))
        )
        out += stream + b"\nendstream\nendobj\n"
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def with_page_tree(
    data: bytes, kids: list[int], *, count: int | None = None, xref_stream: bool = False,
    free: tuple[int, ...] = (), extra: dict[int, bytes] | None = None,
) -> bytes:
    """An update redefining the catalog to point at a new /Pages with *kids*."""
    root, size = pdf_root(data), pdf_size(data)
    pages_num = size
    objects = dict(extra or {})
    objects[root] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_num
    objects[pages_num] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids) if count is None else count,
    )
    new_size = max([size + 1, *[n + 1 for n in objects]])
    return append_update(
        data, objects, free=free, root=root, size=new_size, xref_stream=xref_stream
    )


@pytest.fixture
def strict_pdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the PDF parser falls back to scanning: the xref path must do it."""

    def no_reconstruct(self: object) -> None:
        raise AssertionError("fell back to reconstructing the cross-reference")

    monkeypatch.setattr(documents._Pdf, "reconstruct", no_reconstruct)


# (mixed5-userpw-objstm.pdf is left out: not countable without the password,
# so reconstruction is rightly its last try)
@pytest.mark.parametrize(
    "name", sorted(n for n in EXPECTED if n.endswith(".pdf") and "userpw-objstm" not in n)
)
def test_well_formed_pdfs_need_no_reconstruction(strict_pdf: None, name: str) -> None:
    assert count_pages(fixture(name)) == DocumentInfo(*EXPECTED[name])


# ---------------------------------------------------------------------------
# PDF: incremental updates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["mixed5.pdf", "mixed5-objstm.pdf", "mixed5-linearized.pdf"])
@pytest.mark.parametrize("xref_stream", [False, True])
def test_pdf_incremental_update_deletes_pages(
    strict_pdf: None, tmp_path: Path, base: str, xref_stream: bool
) -> None:
    data = fixture(base).read_bytes()
    pages = pdf_page_objects(data)
    assert len(pages) == 5
    keep = [pages[0], pages[2], pages[4]]
    updated = with_page_tree(
        data, keep, xref_stream=xref_stream, free=(pages[1], pages[3])
    )
    assert count_pages(write(tmp_path, "u.pdf", updated)) == DocumentInfo(PDF, 3, None)


@pytest.mark.parametrize("xref_stream", [False, True])
def test_pdf_incremental_update_deletes_pages_without_freeing_them(
    strict_pdf: None, tmp_path: Path, xref_stream: bool
) -> None:
    # the deleted page objects are still in the file and still look like pages
    data = fixture("mixed5.pdf").read_bytes()
    pages = pdf_page_objects(data)
    updated = with_page_tree(data, pages[:2], xref_stream=xref_stream)
    assert count_pages(write(tmp_path, "u.pdf", updated)).pages == 2


@pytest.mark.parametrize("base", ["mixed5.pdf", "mixed5-objstm.pdf"])
def test_pdf_incremental_updates_add_then_remove(strict_pdf: None, tmp_path: Path, base: str) -> None:
    data = fixture(base).read_bytes()
    pages = pdf_page_objects(data)
    size = pdf_size(data)
    new1, new2 = size + 1, size + 2
    extra = {
        n: b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] >>" % size
        for n in (new1, new2)
    }
    added = with_page_tree(data, [*pages, new1, new2], extra=extra)
    assert count_pages(write(tmp_path, "a.pdf", added)).pages == 7
    # a second update, as an xref stream chained by /Prev to the first
    removed = with_page_tree(
        added, [pages[0], new2], xref_stream=True, free=(pages[1], new1)
    )
    assert count_pages(write(tmp_path, "r.pdf", removed)).pages == 2


def test_pdf_last_trailer_root_wins(strict_pdf: None, tmp_path: Path) -> None:
    data = fixture("mono3.pdf").read_bytes()
    pages = pdf_page_objects(data)
    size = pdf_size(data)
    # a brand-new catalog under a new number; the old one is left untouched
    objects = {
        size: b"<< /Type /Catalog /Pages %d 0 R >>" % (size + 1),
        size + 1: b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % pages[0],
    }
    updated = append_update(data, objects, root=size, size=size + 2)
    assert count_pages(write(tmp_path, "u.pdf", updated)).pages == 1


def test_pdf_page_tree_walk_beats_a_lying_count(strict_pdf: None, tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    pages = pdf_page_objects(data)
    low = with_page_tree(data, pages, count=1)
    assert count_pages(write(tmp_path, "low.pdf", low)).pages == 5
    high = with_page_tree(data, pages[:2], count=500)
    assert count_pages(write(tmp_path, "high.pdf", high)).pages == 2


def test_pdf_nested_page_tree(strict_pdf: None, tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    pages = pdf_page_objects(data)
    size = pdf_size(data)
    inner = size + 1
    extra = {
        inner: b"<< /Type /Pages /Kids [%s] /Count 4 >>"
        % b" ".join(b"%d 0 R" % p for p in pages[:4])
    }
    updated = with_page_tree(data, [inner, pages[4], pages[0]], count=6, extra=extra)
    assert count_pages(write(tmp_path, "n.pdf", updated)).pages == 6


def test_pdf_page_tree_loop_falls_back_to_count(strict_pdf: None, tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    size = pdf_size(data)
    # /Pages whose only kid is itself: the walk cannot finish, /Count is used
    updated = with_page_tree(data, [size], count=4)
    assert count_pages(write(tmp_path, "loop.pdf", updated)).pages == 4


# ---------------------------------------------------------------------------
# PDF: hand-built files (hybrid reference, xref streams with /Index)
# ---------------------------------------------------------------------------


def build_pdf(objects: dict[int, bytes], trailer: bytes, header: bytes = b"%PDF-1.5\n") -> bytes:
    out = bytearray(header)
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (num, objects[num])
    xref_at = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        if num in offsets:
            out += b"%010d 00000 n \n" % offsets[num]
        else:
            out += b"0000000000 00000 f \n"
    out += b"trailer\n<< /Size %d %s >>\nstartxref\n%d\n%%%%EOF\n" % (size, trailer, xref_at)
    return bytes(out)


def test_pdf_hybrid_reference_file(strict_pdf: None, tmp_path: Path) -> None:
    # Pages 4 and 5 live in object stream 3, known only to the /XRefStm
    # stream; /Count is deliberately wrong so only a full walk gives 2.
    members = [b"<< /Type /Page /Parent 2 0 R >>", b"<< /Type /Page /Parent 2 0 R >>"]
    header = b"4 0 5 %d " % (len(members[0]) + 1)
    body = members[0] + b" " + members[1]
    objstm = zlib.compress(header + body)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [4 0 R 5 0 R] /Count 7 >>",
        3: b"<< /Type /ObjStm /N 2 /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
        % (len(header), len(objstm))
        + objstm
        + b"\nendstream",
    }
    rows = struct.pack(">BHB", 2, 3, 0) + struct.pack(">BHB", 2, 3, 1)
    objects[6] = (
        b"<< /Type /XRef /Size 7 /W [1 2 1] /Index [4 2] /Length %d >>\nstream\n" % len(rows)
        + rows
        + b"\nendstream"
    )
    data = build_pdf(objects, b"/Root 1 0 R /XRefStm XREFSTM")
    xrefstm_at = data.index(b"6 0 obj")
    data = data.replace(b"XREFSTM", b"%d" % xrefstm_at)
    # the xref table offsets are before the trailer, so they are unaffected
    assert count_pages(write(tmp_path, "hybrid.pdf", data)) == DocumentInfo(PDF, 2, None)


@pytest.mark.parametrize("base", ["mixed5.pdf", "mixed5-objstm.pdf"])
def test_pdf_with_pjl_wrapper_and_shifted_offsets(
    strict_pdf: None, tmp_path: Path, base: str
) -> None:
    data = fixture(base).read_bytes()
    pages = pdf_page_objects(data)
    updated = with_page_tree(data, pages[:4])  # a /Prev chain, offsets relative to %PDF-
    prefix = UEL + b"@PJL JOB\n@PJL ENTER LANGUAGE=PDF\n"
    # offsets counted from %PDF- (what the generator wrote before the wrapper)
    shifted = write(tmp_path, "a.pdf", prefix + updated)
    assert count_pages(shifted) == DocumentInfo(PDF, 4, None)
    # offsets counted from the start of the file
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>",
        3: b"<< /Type /Page /Parent 2 0 R >>",
        4: b"<< /Type /Page /Parent 2 0 R >>",
    }
    absolute = build_pdf(objects, b"/Root 1 0 R", header=prefix + b"%PDF-1.4\n")
    assert count_pages(write(tmp_path, "b.pdf", absolute)) == DocumentInfo(PDF, 2, None)


def test_pdf_broken_older_section_keeps_newer_ones(strict_pdf: None, tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    pages = pdf_page_objects(data)
    size = pdf_size(data)
    # the update defines everything it needs, but its /Prev points nowhere
    objects = {
        size: b"<< /Type /Catalog /Pages %d 0 R >>" % (size + 1),
        size + 1: b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % (size + 2),
        size + 2: b"<< /Type /Page /Parent %d 0 R >>" % (size + 1),
    }
    updated = append_update(data, objects, root=size, size=size + 3)
    updated = updated.replace(b"/Prev %d" % pdf_startxref(data), b"/Prev 3")
    assert pages
    assert count_pages(write(tmp_path, "a.pdf", updated)).pages == 1


def test_pdf_with_trailing_garbage(strict_pdf: None, tmp_path: Path) -> None:
    data = fixture("mixed5-objstm.pdf").read_bytes() + b"\x00" * 5000 + b"garbage\r\n"
    assert count_pages(write(tmp_path, "t.pdf", data)).pages == 5


# ---------------------------------------------------------------------------
# PDF: broken files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["mixed5.pdf", "mixed5-objstm.pdf", "mixed5-linearized.pdf"])
def test_pdf_wrong_startxref_is_reconstructed(tmp_path: Path, base: str) -> None:
    data = fixture(base).read_bytes()
    i = data.rindex(b"startxref")
    broken = data[:i] + b"startxref\n17\n%%EOF\n"
    assert count_pages(write(tmp_path, "b.pdf", broken)).pages == 5
    no_startxref = data[:i]
    assert count_pages(write(tmp_path, "c.pdf", no_startxref)).pages == 5


def test_pdf_without_xref_and_trailer(tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    chopped = data[: data.rindex(b"xref")]
    assert count_pages(write(tmp_path, "c.pdf", chopped)).pages == 5


def test_pdf_reconstruction_respects_incremental_updates(tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    pages = pdf_page_objects(data)
    updated = with_page_tree(data, pages[1:4])
    i = updated.rindex(b"startxref")
    broken = updated[:i] + b"startxref\n999999999\n%%EOF\n"
    assert count_pages(write(tmp_path, "b.pdf", broken)).pages == 3


def test_pdf_without_catalog_counts_page_objects(tmp_path: Path) -> None:
    data = fixture("mixed5.pdf").read_bytes()
    chopped = data[: data.rindex(b"xref")]
    # break the catalog's link to the page tree: only /Type /Page objects remain
    broken = re.sub(rb"/Type\s*/Catalog", b"/Type /Broken", chopped)
    broken = re.sub(rb"/Pages(\s*\d+ 0 R)", rb"/Pagez\1", broken)
    assert b"/Type /Pages" in broken or b"/Type/Pages" in broken
    assert count_pages(write(tmp_path, "p.pdf", broken)).pages == 5


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n",
        b"%PDF-1.4\n%%EOF\n",
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n",
        b"%PDF-1.4\n1 0 obj\n" + b"[" * 50_000 + b"\nendobj\nstartxref\n9\n%%EOF",
        b"%PDF-1.4\n1 0 obj\n" + b"<<" * 50_000 + b"\nendobj\ntrailer << /Root 1 0 R >>",
        b"%PDF-1.4\nxref\n0 99999999\ntrailer\n<< >>\nstartxref\n9\n%%EOF",
        b"%PDF-1.4\n1 0 obj << /Type /XRef /W [1 9 9] /Length 5 >> stream\nxxxxx\nendstream"
        b" endobj\nstartxref\n9\n%%EOF",
        b"%PDF-1.4\n1 0 obj << /Length 99999999999 >> stream\nabc\nendstream endobj\n"
        b"trailer << /Root 1 0 R >>",
    ],
)
def test_pdf_garbage_gives_none(tmp_path: Path, data: bytes) -> None:
    assert count_pages(write(tmp_path, "g.pdf", data)) == DocumentInfo(PDF, None, None)


@pytest.mark.parametrize(
    "unit",
    [
        b"%d 0 obj\n(",  # strings that never end: every object rescans to EOF
        b"%d 0 obj << /Type /Page >> stream\n",  # streams without endstream
        b"%d 0 obj\n[",
        b"%d 0 obj\n<< /Type /Page ",
    ],
)
def test_pdf_rescanning_is_bounded(tmp_path: Path, unit: bytes) -> None:
    data = b"%PDF-1.4\n" + b"".join(unit % i for i in range(30_000))
    started = time.monotonic()
    info = count_pages(write(tmp_path, "adv.pdf", data))
    assert info.format == PDF
    assert time.monotonic() - started < 30


def test_pdf_encrypted_object_streams_need_the_user_password() -> None:
    # /Count sits in an object stream encrypted with a real user password:
    # None, not a guess (and no counting of whatever is left in plain view)
    info = count_pages(fixture("mixed5-userpw-objstm.pdf"))
    assert info == DocumentInfo(PDF, None, None)


@pytest.mark.parametrize(
    "name", ["mixed5-encrypted-objstm.pdf", "mono3-rc4-objstm.pdf", "mixed5-rc4-40-objstm.pdf"]
)
def test_pdf_encrypted_and_broken(tmp_path: Path, name: str) -> None:
    # reconstruction finds the encryption dictionary too
    data = fixture(name).read_bytes()
    broken = data[: data.rindex(b"startxref")]
    assert count_pages(write(tmp_path, "b.pdf", broken)) == DocumentInfo(*EXPECTED[name])


def test_pdf_encryption_strings_in_literal_form(tmp_path: Path) -> None:
    # /O and /U as escaped literal strings instead of hex (offsets shift, so
    # this also goes through reconstruction)
    data = fixture("mixed5-rc4-40-objstm.pdf").read_bytes()

    def literal(m: re.Match[bytes]) -> bytes:
        raw = bytes.fromhex(m.group(2).decode())
        body = b"".join(
            b"\\%03o" % c if c < 32 or c > 126 or c in b"()\\" else bytes([c]) for c in raw
        )
        return m.group(1) + b"(" + body + b")"

    converted = re.sub(rb"(/[OU]\s*)<([0-9a-fA-F]+)>", literal, data)
    assert converted != data
    assert count_pages(write(tmp_path, "l.pdf", converted)).pages == 5


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"plain", b"plain"),
        (b"a\\(b\\)c", b"a(b)c"),
        (b"\\n\\r\\t\\b\\f\\\\", b"\n\r\t\b\f\\"),
        (b"\\101\\0\\7z\\1234", b"A\x00\x07zS4"),
        (b"line\\\ncontinued\\\r\nhere", b"linecontinuedhere"),
        (b"cr\rcrlf\r\nlf\n", b"cr\ncrlf\nlf\n"),
        (b"unknown \\q escape", b"unknown q escape"),
    ],
)
def test_literal_string_escapes(raw: bytes, value: bytes) -> None:
    assert documents._unescape(raw) == value


# ---------------------------------------------------------------------------
# PostScript
# ---------------------------------------------------------------------------


def test_ps_line_endings(tmp_path: Path) -> None:
    data = fixture("mixed5.ps").read_bytes()
    assert count_pages(write(tmp_path, "cr.ps", data.replace(b"\n", b"\r"))).pages == 5
    assert count_pages(write(tmp_path, "crlf.ps", data.replace(b"\n", b"\r\n"))).pages == 5


def test_ps_page_comments_beat_an_understated_pages_comment(tmp_path: Path) -> None:
    body = b"%!PS-Adobe-3.0\n%%Pages: 2\n%%EndComments\n"
    body += b"".join(b"%%%%Page: %d %d\nshowpage\n" % (i, i) for i in range(1, 5))
    assert count_pages(write(tmp_path, "a.ps", body)).pages == 4


def test_ps_pages_comment_without_page_comments(tmp_path: Path) -> None:
    body = b"%!PS-Adobe-3.0\n%%Pages: 7\n%%EndComments\nshowpage\n"
    assert count_pages(write(tmp_path, "a.ps", body)).pages == 7


def test_ps_page_comments_without_pages_comment(tmp_path: Path) -> None:
    body = b"%!PS\n%%Page: 1 1\nshowpage\n%%Page: 2 2\nshowpage\n%%PageTrailer\n"
    assert count_pages(write(tmp_path, "a.ps", body)).pages == 2


def test_ps_binary_data_sections_are_skipped(tmp_path: Path) -> None:
    body = (
        b"%!PS-Adobe-3.0\n%%Pages: (atend)\n%%EndComments\n%%Page: 1 1\n"
        b"%%BeginData: 3 ASCII Lines\n%%Page: 9 9\n%%Page: 10 10\n%%Pages: 40\n%%EndData\n"
        b"showpage\n%%Trailer\n%%Pages: 1\n%%EOF\n"
    )
    assert count_pages(write(tmp_path, "a.ps", body)).pages == 1


def test_ps_comments_not_at_line_start_do_not_count(tmp_path: Path) -> None:
    body = b"%!PS\n%%Page: 1 1\n(%%Page: 2 2) pop showpage\n"
    assert count_pages(write(tmp_path, "a.ps", body)).pages == 1


def test_ps_pjl_wrapped(tmp_path: Path) -> None:
    data = UEL + b"@PJL JOB\r\n@PJL ENTER LANGUAGE=POSTSCRIPT\r\n"
    data += fixture("mixed5.ps").read_bytes() + UEL + b"@PJL EOJ\r\n" + UEL
    assert count_pages(write(tmp_path, "a.prn", data)) == DocumentInfo(POSTSCRIPT, 5, None)


def test_ps_large_file_streams_across_chunks(tmp_path: Path) -> None:
    # > 2 chunks of 1 MiB, %%Page: lines falling on every kind of boundary
    filler = b"% " + b"x" * 997 + b"\n"
    parts = [b"%!PS-Adobe-3.0\n%%Pages: (atend)\n%%EndComments\n"]
    for i in range(1, 3001):
        parts.append(b"%%%%Page: %d %d\n" % (i, i))
        parts.append(filler * (i % 3))
        parts.append(b"showpage\n")
    parts.append(b"%%Trailer\n%%Pages: 3000\n%%EOF\n")
    data = b"".join(parts)
    assert len(data) > 2 * (1 << 20)
    assert count_pages(write(tmp_path, "big.ps", data)).pages == 3000
    # also with the trailer value missing: the page comments are counted
    data = data.replace(b"%%Pages: 3000", b"")
    assert count_pages(write(tmp_path, "big2.ps", data)).pages == 3000


def test_eps_is_one_page(tmp_path: Path) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\n0 0 9 9 rectfill\n"
    assert count_pages(write(tmp_path, "a.eps", eps)) == DocumentInfo(POSTSCRIPT, 1, None)
    dos = struct.pack("<4sIIIIIIH", b"\xc5\xd0\xd3\xc6", 30, len(eps), 0, 0, 0, 0, 0xFFFF)
    assert count_pages(write(tmp_path, "b.eps", dos + eps)) == DocumentInfo(POSTSCRIPT, 1, None)


def test_ps_without_dsc_is_not_countable(tmp_path: Path) -> None:
    p = write(tmp_path, "a.ps", b"%!PS\n1 1 3 { pop showpage } for\n")
    assert count_pages(p) == DocumentInfo(POSTSCRIPT, None, None)


# ---------------------------------------------------------------------------
# PWG / CUPS raster
# ---------------------------------------------------------------------------


def cups_header(
    *, width: int = 16, height: int = 8, bpc: int = 8, colors: int = 1, cspace: int = 18,
    endian: str = ">",
) -> bytes:
    hdr = bytearray(1796)
    hdr[0:9] = b"PwgRaster"
    bpp = bpc * colors
    fields = (width, height, 0, bpc, bpp, (width * bpp + 7) // 8, 0, cspace, 0)
    struct.pack_into(endian + "9I", hdr, 372, *fields)
    struct.pack_into(endian + "I", hdr, 420, colors)
    return bytes(hdr)


def packed_page(width: int, height: int, unit: int) -> bytes:
    """Lines encoded with every run type, some bytes looking like sync words."""
    out = bytearray()
    lines = 0
    while lines < height:
        rep = min(255, height - lines - 1)
        out.append(rep)
        # literal run of 4 pixels, a repeat run of 2, then clear to end of line
        out.append(257 - 4)
        out += (b"RaS2PwgRaster\x80\xff\x43" * 4)[: 4 * unit]
        out.append(1)
        out += b"\x80" * unit
        if width > 6:
            out.append(128)
        lines += rep + 1
    return bytes(out)


def pwg(pages: list[dict[str, int]], sync: bytes = b"RaS2") -> bytes:
    endian = "<" if sync in (b"2SaR", b"3SaR") else ">"
    out = bytearray(sync)
    for page in pages:
        out += cups_header(endian=endian, **page)
        width, height = page.get("width", 16), page.get("height", 8)
        unit = page.get("bpc", 8) * page.get("colors", 1) // 8
        if sync in (b"RaS3", b"3SaR"):
            out += b"\x43" * (width * unit * height)
        else:
            out += packed_page(width, height, unit)
    return bytes(out)


@pytest.mark.parametrize(
    ("cspace", "colors", "colour"),
    [(18, 1, False), (3, 1, False), (0, 1, False), (48, 1, False),
     (19, 3, True), (1, 3, True), (6, 4, True), (20, 3, True)],
)
def test_pwg_colour_spaces(tmp_path: Path, cspace: int, colors: int, colour: bool) -> None:
    data = pwg([{"cspace": cspace, "colors": colors}] * 2)
    assert count_pages(write(tmp_path, "a.pwg", data)) == DocumentInfo(PWG_RASTER, 2, colour)


def test_pwg_many_tall_pages(tmp_path: Path) -> None:
    pages = [{"cspace": 18, "height": 1000, "width": 100}] * 40
    pages[17] = {"cspace": 19, "colors": 3, "height": 700, "width": 50}
    data = pwg(pages)
    assert count_pages(write(tmp_path, "a.pwg", data)) == DocumentInfo(PWG_RASTER, 40, True)


@pytest.mark.parametrize("sync", [b"2SaR", b"RaS3", b"3SaR"])
def test_cups_raster_variants(tmp_path: Path, sync: bytes) -> None:
    data = pwg([{"cspace": 18}, {"cspace": 19, "colors": 3}, {"cspace": 18}], sync)
    assert count_pages(write(tmp_path, "a.ras", data)) == DocumentInfo(CUPS_RASTER, 3, True)


def test_pwg_truncated(tmp_path: Path) -> None:
    data = fixture("mixed5-sgray.pwg").read_bytes()
    # cut inside the third page's data: it was started, so it counts
    third = [m.start() for m in re.finditer(b"PwgRaster", data)][2]
    cut = write(tmp_path, "a.pwg", data[: third + 1796 + 10])
    assert count_pages(cut) == DocumentInfo(PWG_RASTER, 3, False)
    # cut inside the third page header: two complete pages
    cut = write(tmp_path, "b.pwg", data[: third + 100])
    assert count_pages(cut) == DocumentInfo(PWG_RASTER, 2, False)
    # only the sync word
    assert count_pages(write(tmp_path, "c.pwg", b"RaS2")).pages == 0
    assert count_pages(write(tmp_path, "d.pwg", b"RaS2" + b"\x00" * 50)).pages is None


def test_pwg_implausible_header(tmp_path: Path) -> None:
    data = pwg([{"cspace": 18, "width": 0}])
    assert count_pages(write(tmp_path, "a.pwg", data)) == DocumentInfo(PWG_RASTER, None, None)


# ---------------------------------------------------------------------------
# Apple URF
# ---------------------------------------------------------------------------


def urf(pages: list[tuple[int, int]], declared: int | None = None) -> bytes:
    """(bits per pixel, colour space) per page; 10x6 pixel pages."""
    out = bytearray(b"UNIRAST\x00" + struct.pack(">I", len(pages) if declared is None else declared))
    for bpp, cspace in pages:
        out += bytes([bpp, cspace, 1, 4]) + bytes(8) + struct.pack(">III", 10, 6, 300) + bytes(8)
        out += packed_page(10, 6, max(1, bpp // 8))
    return bytes(out)


def test_urf_pages_and_colour(tmp_path: Path) -> None:
    mono = urf([(8, 0), (8, 4)])
    assert count_pages(write(tmp_path, "m.urf", mono)) == DocumentInfo(URF, 2, False)
    mixed = urf([(8, 0), (24, 1), (8, 0)])
    assert count_pages(write(tmp_path, "c.urf", mixed)) == DocumentInfo(URF, 3, True)
    streamed = urf([(24, 1)] * 4, declared=0)  # page count unknown when written
    assert count_pages(write(tmp_path, "s.urf", streamed)) == DocumentInfo(URF, 4, True)


def test_urf_truncated(tmp_path: Path) -> None:
    data = urf([(8, 0)] * 5)
    # cut inside the last page's data: it was started, so it counts
    assert count_pages(write(tmp_path, "t.urf", data[:-3])).pages == 5
    # the header's page count is not believed over the data
    assert count_pages(write(tmp_path, "l.urf", urf([(8, 0)] * 2, declared=9))).pages == 2
    assert count_pages(write(tmp_path, "h.urf", data[:14])).pages is None


# ---------------------------------------------------------------------------
# PCL XL
# ---------------------------------------------------------------------------


class Pxl:
    """A tiny PCL XL encoder for either binding."""

    def __init__(self, big_endian: bool) -> None:
        self.e = ">" if big_endian else "<"
        binding = b"(" if big_endian else b")"
        self.out = bytearray(
            UEL + b"@PJL ENTER LANGUAGE = PCLXL\n" + binding + b" HP-PCL XL;2;0;Comment C\n"
        )

    def ubyte(self, v: int) -> Pxl:
        self.out += b"\xc0" + bytes([v])
        return self

    def uint16(self, v: int) -> Pxl:
        self.out += b"\xc1" + struct.pack(self.e + "H", v)
        return self

    def uint16_xy(self, x: int, y: int) -> Pxl:
        self.out += b"\xd1" + struct.pack(self.e + "HH", x, y)
        return self

    def real32_box(self, *v: float) -> Pxl:
        self.out += b"\xe5" + struct.pack(self.e + "4f", *v)
        return self

    def ubyte_array(self, data: bytes) -> Pxl:
        self.out += b"\xc8\xc1" + struct.pack(self.e + "H", len(data)) + data
        return self

    def real32_array(self, *v: float) -> Pxl:
        self.out += b"\xcd\xc0" + bytes([len(v)]) + struct.pack(self.e + f"{len(v)}f", *v)
        return self

    def attr(self, aid: int) -> Pxl:
        self.out += b"\xf8" + bytes([aid])
        return self

    def op(self, code: int) -> Pxl:
        self.out += bytes([code])
        return self

    def data(self, payload: bytes) -> Pxl:
        self.out += b"\xfa" + struct.pack(self.e + "I", len(payload)) + payload
        return self

    def short_data(self, payload: bytes) -> Pxl:
        self.out += b"\xfb" + bytes([len(payload)]) + payload
        return self

    def bytes(self) -> bytes:
        return bytes(self.out) + UEL + b"@PJL EOJ\n" + UEL


BEGIN_SESSION, END_SESSION, BEGIN_PAGE, END_PAGE = 0x41, 0x42, 0x43, 0x44
SET_COLOR_SPACE, SET_BRUSH_SOURCE, SET_PEN_SOURCE = 0x6A, 0x63, 0x79
BEGIN_IMAGE, READ_IMAGE, END_IMAGE = 0xB0, 0xB1, 0xB2
A_COLOR_SPACE, A_PALETTE_DATA, A_GRAY_LEVEL, A_RGB_COLOR = 3, 6, 9, 11
E_GRAY, E_RGB = 1, 2


def pxl_job(big_endian: bool, pages: int, page_body: list[bytes] | None = None) -> bytes:
    """A job full of 0x43 bytes that are not BeginPage operators."""
    p = Pxl(big_endian)
    p.uint16_xy(600, 600).attr(0x89).ubyte(0x43).attr(0x86).op(BEGIN_SESSION)
    for i in range(pages):
        p.ubyte(0x43).attr(0x43).uint16(0x4343).attr(0x25).op(BEGIN_PAGE)
        p.ubyte(E_GRAY).attr(A_COLOR_SPACE).op(SET_COLOR_SPACE)
        p.ubyte(0x43).attr(A_GRAY_LEVEL).op(SET_BRUSH_SOURCE)
        # 258 bytes of array: the length reads differently in the other byte order
        p.ubyte_array(b"\x43" * 258).attr(0x44).real32_box(67.0, 67.0, 300.0, 400.0)
        p.attr(0x42).op(0x81)
        p.uint16(4).attr(0x6C).op(READ_IMAGE).data(b"\x43\x44\x43\x41" * 300)
        p.op(READ_IMAGE).short_data(b"\x43" * 67)
        if page_body and i < len(page_body):
            p.out += page_body[i]
        p.uint16(1).attr(0x31).op(END_PAGE)
    p.op(END_SESSION)
    return p.bytes()


@pytest.mark.parametrize("big_endian", [False, True])
def test_pclxl_counts_begin_page_operators_only(tmp_path: Path, big_endian: bool) -> None:
    data = pxl_job(big_endian, 3)
    assert data.count(b"\x43") > 1000
    path = write(tmp_path, "a.pxl", data)
    assert count_pages(path) == DocumentInfo(PCLXL, 3, False)


def rgb_page(big_endian: bool, setup: list[tuple[str, tuple[object, ...]]]) -> bytes:
    p = Pxl(big_endian)
    p.out = bytearray()
    for method, args in setup:
        getattr(p, method)(*args)
    return bytes(p.out)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize(
    ("setup", "colour"),
    [
        # RGB colour space, a real colour
        ([("ubyte", (E_RGB,)), ("attr", (A_COLOR_SPACE,)), ("op", (SET_COLOR_SPACE,)),
          ("ubyte_array", (b"\xc8\x10\x10",)), ("attr", (A_RGB_COLOR,)),
          ("op", (SET_BRUSH_SOURCE,))], True),
        # RGB colour space, an (almost) neutral grey
        ([("ubyte", (E_RGB,)), ("attr", (A_COLOR_SPACE,)), ("op", (SET_COLOR_SPACE,)),
          ("ubyte_array", (b"\x6d\x6e\x71",)), ("attr", (A_RGB_COLOR,)),
          ("op", (SET_PEN_SOURCE,))], False),
        # real32 RGB colour
        ([("ubyte", (E_RGB,)), ("attr", (A_COLOR_SPACE,)), ("op", (SET_COLOR_SPACE,)),
          ("real32_array", (0.0, 0.0, 1.0)), ("attr", (A_RGB_COLOR,)),
          ("op", (SET_BRUSH_SOURCE,))], True),
        # an RGB colour while in a grey colour space is not used as colour
        ([("ubyte", (E_GRAY,)), ("attr", (A_COLOR_SPACE,)), ("op", (SET_COLOR_SPACE,)),
          ("ubyte_array", (b"\xff\x00\x00",)), ("attr", (A_RGB_COLOR,))], False),
        # direct RGB image: assumed colour
        ([("ubyte", (E_RGB,)), ("attr", (A_COLOR_SPACE,)), ("op", (SET_COLOR_SPACE,)),
          ("op", (BEGIN_IMAGE,)), ("op", (END_IMAGE,))], True),
        # RGB image through a grey palette
        ([("ubyte", (E_RGB,)), ("attr", (A_COLOR_SPACE,)),
          ("ubyte_array", (b"\x00\x00\x00\x80\x80\x80\xff\xff\xff",)), ("attr", (A_PALETTE_DATA,)),
          ("op", (SET_COLOR_SPACE,)), ("op", (BEGIN_IMAGE,))], False),
        # RGB palette with a colour entry
        ([("ubyte", (E_RGB,)), ("attr", (A_COLOR_SPACE,)),
          ("ubyte_array", (b"\x00\x00\x00\xff\x00\x00",)), ("attr", (A_PALETTE_DATA,)),
          ("op", (SET_COLOR_SPACE,))], True),
    ],
)
def test_pclxl_colour(
    tmp_path: Path, big_endian: bool, setup: list[tuple[str, tuple[object, ...]]], colour: bool
) -> None:
    body = rgb_page(big_endian, setup)
    data = pxl_job(big_endian, 3, [b"", body])
    assert count_pages(write(tmp_path, "a.pxl", data)) == DocumentInfo(PCLXL, 3, colour)


def test_pclxl_wrong_binding_is_not_silently_miscounted(tmp_path: Path) -> None:
    data = pxl_job(True, 3).replace(b"( HP-PCL XL", b") HP-PCL XL")
    assert count_pages(write(tmp_path, "a.pxl", data)).pages != 3


def test_pclxl_bad_tag_and_truncation(tmp_path: Path) -> None:
    data = pxl_job(False, 4)
    bad = data.replace(b"\xfb\x43", b"\xfe\x43", 1)
    assert count_pages(write(tmp_path, "bad.pxl", bad)) == DocumentInfo(PCLXL, None, None)
    # truncated in the middle of the third page's image data
    third = [m.start() for m in re.finditer(rb"\xf8\x25\x43", data)][2]
    cut = data[: third + 400]
    assert count_pages(write(tmp_path, "cut.pxl", cut)) == DocumentInfo(PCLXL, 3, False)


def pxl_rgb_image(big_endian: bool, compression: int, block: bytes, depth: int = 2) -> bytes:
    """An eRGB page fragment drawing a 4x2 direct-pixel image."""
    p = Pxl(big_endian)
    p.out = bytearray()
    p.ubyte(E_RGB).attr(A_COLOR_SPACE).op(SET_COLOR_SPACE)
    p.ubyte(depth).attr(0x62).ubyte(0).attr(0x64).uint16(4).attr(0x6C).uint16(2).attr(0x6B)
    p.op(BEGIN_IMAGE)
    p.uint16(0).attr(0x6D).uint16(2).attr(0x63).ubyte(compression).attr(0x65).op(READ_IMAGE)
    p.data(block).op(END_IMAGE)
    return bytes(p.out)


GREY_ROW = bytes([0x40, 0x40, 0x40, 0x80, 0x80, 0x80, 0x81, 0x80, 0x82, 0xFF, 0xFF, 0xFF])
RED_ROW = bytes([0x40, 0x40, 0x40, 0xC8, 0x10, 0x10, 0x81, 0x80, 0x82, 0xFF, 0xFF, 0xFF])


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize(
    ("compression", "block", "depth", "colour"),
    [
        (0, GREY_ROW * 2, 2, False),
        (0, GREY_ROW + RED_ROW, 2, True),
        # RLE (PackBits): a literal row, then 12 bytes repeated
        (1, bytes([11]) + GREY_ROW + bytes([257 - 12, 0x80]), 2, False),
        (1, bytes([11]) + GREY_ROW + bytes([11]) + RED_ROW, 2, True),
        # runs that split a pixel: (0x20, 0x20, 0x30)
        (1, bytes([257 - 12, 0x80, 128]) + bytes([257 - 2, 0x20, 257 - 10, 0x30]), 2, True),
        # JPEG and delta-row data, and other depths, are not decoded: colour assumed
        (2, b"\xff\xd8\xff\xe0", 2, True),
        (3, GREY_ROW * 2, 2, True),
        (0, GREY_ROW * 2, 1, True),
    ],
)
def test_pclxl_rgb_images(
    tmp_path: Path, big_endian: bool, compression: int, block: bytes, depth: int, colour: bool
) -> None:
    body = pxl_rgb_image(big_endian, compression, block, depth)
    data = pxl_job(big_endian, 2, [body])
    assert count_pages(write(tmp_path, "i.pxl", data)) == DocumentInfo(PCLXL, 2, colour)


def test_pclxl_concatenated_jobs(tmp_path: Path) -> None:
    # two PJL jobs back to back, in different bindings, the second in colour
    colour = rgb_page(
        True,
        [
            ("ubyte", (E_RGB,)),
            ("attr", (A_COLOR_SPACE,)),
            ("op", (SET_COLOR_SPACE,)),
            ("ubyte_array", (b"\x00\xff\x00",)),
            ("attr", (A_RGB_COLOR,)),
            ("op", (SET_BRUSH_SOURCE,)),
        ],
    )
    data = pxl_job(False, 2) + pxl_job(True, 3, [b"", b"", colour])
    assert count_pages(write(tmp_path, "a.pxl", data)) == DocumentInfo(PCLXL, 5, True)
    # a stray ESC that is not a UEL is malformed
    bad = pxl_job(False, 2).replace(b"\xf8\x25\x43", b"\xf8\x25\x1b\x43", 1)
    assert count_pages(write(tmp_path, "b.pxl", bad)).pages is None
    # cut short inside the final UEL
    cut = pxl_job(False, 2)
    cut = cut[: cut.index(UEL + b"@PJL EOJ") + 4]
    assert count_pages(write(tmp_path, "c.pxl", cut)).pages == 2


def test_pclxl_without_pjl(tmp_path: Path) -> None:
    data = pxl_job(False, 2)
    data = data[data.index(b") HP-PCL XL") :]
    assert count_pages(write(tmp_path, "a.pxl", data)) == DocumentInfo(PCLXL, 2, False)


# ---------------------------------------------------------------------------
# JPEG and PNG (single images)
# ---------------------------------------------------------------------------


def png(colour_type: int, palette: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, colour_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(b"\x00" * 20)) + chunk(b"IEND", b"")


def jpeg(components: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = struct.pack(">BHHB", 8, 4, 4, components) + b"\x01\x11\x00" * components
    return b"\xff\xd8" + app0 + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


@pytest.mark.parametrize(
    ("data", "fmt", "colour"),
    [
        (png(0), PNG, False),
        (png(4), PNG, False),
        (png(2), PNG, True),
        (png(6), PNG, True),
        (png(3, b"\x00\x00\x00\x80\x80\x80"), PNG, False),
        (png(3, b"\x00\x00\x00\xff\x00\x00"), PNG, True),
        (jpeg(1), JPEG, False),
        (jpeg(3), JPEG, True),
        (jpeg(4), JPEG, True),
    ],
)
def test_single_images(tmp_path: Path, data: bytes, fmt: str, colour: bool) -> None:
    assert count_pages(write(tmp_path, "img", data)) == DocumentInfo(fmt, 1, colour)


# ---------------------------------------------------------------------------
# Ghostscript colour detection and analyse()
# ---------------------------------------------------------------------------


@needs_gs
@pytest.mark.parametrize(
    ("name", "colour"),
    [
        ("mixed5.pdf", True),
        ("mono3.pdf", False),
        ("mixed5.ps", True),
        ("mono3.ps", False),
        ("mixed5-ps2write.ps", True),
        ("mono3-ps2write.ps", False),
        ("mixed5-objstm.pdf", True),
        ("mono3-linearized-objstm.pdf", False),
        ("mono3-encrypted.pdf", False),
        ("atend4.ps", True),
        ("embedded2.ps", False),
    ],
)
def test_detect_colour(name: str, colour: bool) -> None:
    assert detect_colour(fixture(name), EXPECTED[name][0]) is colour


@needs_gs
def test_detect_colour_neutral_rgb_is_mono(tmp_path: Path) -> None:
    # RGB black and greys are what office documents use for "black"; plain
    # inkcov would report them as rich black (C, M and Y ink)
    ps = (
        b"%!PS\n0 0 0 setrgbcolor 72 72 200 200 rectfill showpage\n"
        b"0.3 0.3 0.3 setrgbcolor 72 72 200 200 rectfill showpage\n"
        b"0.9 0.9 0.91 setrgbcolor 72 72 200 200 rectfill showpage\n"
    )
    assert detect_colour(write(tmp_path, "g.ps", ps), POSTSCRIPT) is False
    dot = ps + b"0 1 1 setrgbcolor 300 300 1 1 rectfill showpage\n"
    assert detect_colour(write(tmp_path, "c.ps", dot), POSTSCRIPT) is True


@needs_gs
@pytest.mark.parametrize(
    ("content", "colour"),
    [
        (b"0 0 0 rg 72 72 200 200 re f /G1 gs 0.5 0.5 0.5 rg 100 100 200 200 re f", False),
        (b"0 0 0 rg 72 72 200 200 re f /G1 gs 1 0 0 rg 100 100 200 200 re f", True),
        (b"0 0 0 1 k 72 72 200 200 re f /G1 gs 0 0 0 0.5 k 100 100 200 200 re f", False),
        (b"/CS0 cs 0.2 0.2 0.2 sc 72 72 200 200 re f", False),
        (b"/CS0 cs 0.2 0.2 0.6 sc 72 72 200 200 re f", True),
    ],
)
def test_detect_colour_transparency_and_icc(tmp_path: Path, content: bytes, colour: bool) -> None:
    # an RGB transparency group blending in multiply mode, and ICC-based RGB with
    # ghostscript's own sRGB profile (libgs-common, a dependency of the ghostscript
    # package that `make test` installs)
    icc = Path("/usr/share/ghostscript")
    profiles = sorted(icc.glob("*/iccprofiles/srgb.icc"))
    assert profiles, "ghostscript's sRGB profile is missing: install ghostscript (make setup)"
    resources = b"/ExtGState << /G1 << /ca 0.5 /CA 0.5 /BM /Multiply >> >>"
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        4: b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    }
    profile = profiles[0].read_bytes()
    objects[5] = b"<< /N 3 /Length %d >>\nstream\n" % len(profile) + profile + b"\nendstream"
    resources += b" /ColorSpace << /CS0 [/ICCBased 5 0 R] >>"
    objects[3] = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Group << /S /Transparency /CS /DeviceRGB /I true >> /Resources << %s >> >>"
        % resources
    )
    pdf = write(tmp_path, "t.pdf", build_pdf(objects, b"/Root 1 0 R", header=b"%PDF-1.4\n"))
    assert count_pages(pdf).pages == 1
    assert detect_colour(pdf, PDF) is colour


@needs_gs
def test_detect_colour_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # encrypted with a user password: gs cannot open it
    assert detect_colour(fixture("mixed5-userpw.pdf"), PDF) is None
    # unknown content: nothing to say
    assert detect_colour(write(tmp_path, "x.bin", b"\x00" * 100), OCTET_STREAM) is None
    # a PostScript error
    assert detect_colour(write(tmp_path, "e.ps", b"%!PS\nundefinedthing\n"), POSTSCRIPT) is None
    # a job that never ends is killed at the timeout
    loop = write(tmp_path, "loop.ps", b"%!PS\n{} loop\n")
    assert detect_colour(loop, POSTSCRIPT, timeout=1) is None
    # a path that looks like a gs switch
    monkeypatch.chdir(tmp_path)
    shutil.copy(fixture("mixed5.pdf"), tmp_path / "-dNOSAFER.pdf")
    assert detect_colour("-dNOSAFER.pdf", PDF) is True


@pytest.mark.parametrize(
    ("name", "colour"),
    [
        ("mixed5-srgb.pwg", True),
        ("mono3-sgray.pwg", False),
        ("mixed5-pxlcolor.pxl", True),
        ("mono3-pxlcolor.pxl", False),
        ("mono3.urf", False),
    ],
)
def test_detect_colour_other_formats_need_no_gs(
    monkeypatch: pytest.MonkeyPatch, name: str, colour: bool
) -> None:
    # the format says it: no ghostscript involved
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert detect_colour(fixture(name), OCTET_STREAM) is colour


def test_detect_colour_without_gs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert detect_colour(fixture("mixed5.pdf"), PDF) is None
    assert analyse(fixture("mixed5.pdf")) == DocumentInfo(PDF, 5, None)


def test_detect_colour_gs_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/nonexistent/gs")
    assert detect_colour(fixture("mixed5.pdf"), PDF) is None


def test_detect_colour_missing_file() -> None:
    assert detect_colour("/nonexistent/outpost.pdf", PDF) is None


@needs_gs
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mixed5.pdf", (PDF, 5, True)),
        ("mono3.pdf", (PDF, 3, False)),
        ("mixed5.ps", (POSTSCRIPT, 5, True)),
        # gs supplies what the parser cannot
        ("nodsc3.ps", (POSTSCRIPT, 3, True)),
        ("mixed5-encrypted-objstm.pdf", (PDF, 5, True)),
        ("mono3-rc4-objstm.pdf", (PDF, 3, False)),
        # gs fails: the parser's answer stands
        ("mixed5-userpw.pdf", (PDF, 5, None)),
        ("mixed5-userpw-objstm.pdf", (PDF, None, None)),
        # not a gs format: cheap colour from the format itself
        ("mixed5-pxlcolor.pxl", (PCLXL, 5, True)),
        ("mono3-sgray.pwg", (PWG_RASTER, 3, False)),
    ],
)
def test_analyse(name: str, expected: tuple[str, int | None, bool | None]) -> None:
    assert analyse(fixture(name)) == DocumentInfo(*expected)


@needs_gs
def test_analyse_postscript_takes_the_larger_count(tmp_path: Path) -> None:
    # DSC understates: the program prints 3 pages, 1 in colour
    ps = b"%!PS-Adobe-3.0\n%%Pages: 1\n%%EndComments\n%%Page: 1 1\nshowpage showpage\n"
    ps += b"0 0 1 setrgbcolor 9 9 9 9 rectfill showpage\n"
    path = write(tmp_path, "a.ps", ps)
    assert count_pages(path).pages == 1
    assert analyse(path) == DocumentInfo(POSTSCRIPT, 3, True)
    # DSC claims more than the program prints: the claim stands
    ps = b"%!PS-Adobe-3.0\n%%Pages: 5\n%%EndComments\nshowpage showpage\n"
    assert analyse(write(tmp_path, "b.ps", ps)) == DocumentInfo(POSTSCRIPT, 5, False)


@needs_gs
def test_detect_colour_ignores_fake_coverage_on_stdout(tmp_path: Path) -> None:
    ps = (
        b"%!PS\n(0.00000  0.00000  0.00000  0.10000 CMYK OK\n) print\n"
        b"1 0 0 setrgbcolor 72 72 100 100 rectfill showpage\n"
        b"(0.00000  0.00000  0.00000  0.10000 CMYK OK\n) print\n"
    )
    path = write(tmp_path, "evil.ps", ps)
    assert detect_colour(path, POSTSCRIPT) is True
    assert analyse(path) == DocumentInfo(POSTSCRIPT, 1, True)


@needs_gs
@pytest.mark.parametrize(("name", "fmt"), [("mixed5.ps", POSTSCRIPT), ("mixed5.pdf", PDF)])
def test_analyse_pjl_wrapped(tmp_path: Path, name: str, fmt: str) -> None:
    language = b"POSTSCRIPT" if fmt == POSTSCRIPT else b"PDF"
    data = UEL + b"@PJL JOB\r\n@PJL ENTER LANGUAGE=" + language + b"\r\n"
    data += fixture(name).read_bytes() + UEL + b"@PJL EOJ\r\n" + UEL
    assert analyse(write(tmp_path, "job.prn", data), OCTET_STREAM) == DocumentInfo(fmt, 5, True)


def test_analyse_without_ghostscript() -> None:
    assert analyse(fixture("mixed5.pdf"), use_ghostscript=False) == DocumentInfo(PDF, 5, None)
    assert analyse(fixture("nodsc3.ps"), PDF, use_ghostscript=False) == DocumentInfo(
        POSTSCRIPT, None, None
    )


# ---------------------------------------------------------------------------
# Robustness: nothing but a DocumentInfo, whatever the bytes
# ---------------------------------------------------------------------------

DECLARED = [
    None, OCTET_STREAM, PDF, POSTSCRIPT, PWG_RASTER, CUPS_RASTER, URF, PCLXL, PCL, JPEG, PNG,
    "text/plain", "",
]
PREFIXES = [
    b"", b"%PDF-1.7\n", b"%!PS-Adobe-3.0\n", b"RaS2", b"2SaR", b"RaS3", b"UNIRAST\x00",
    b") HP-PCL XL;2;0\n", b"( HP-PCL XL;2;0\n", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n",
    UEL + b"@PJL ENTER LANGUAGE=PCLXL\n", b"RaS2" + cups_header(), b"UNIRAST\x00\x00\x00\x00\x02",
]
PDF_TOKENS = [
    b"<<", b">>", b"[", b"]", b"(", b")", b"<", b">", b"/Type", b"/Pages", b"/Page", b"/Kids",
    b"/Count", b"/Root", b"/Prev", b"/Size", b"/W", b"/Index", b"/Length", b"/Filter",
    b"/FlateDecode", b"/ObjStm", b"/XRef", b"/N", b"/First", b"/DecodeParms", b"/Predictor",
    b"/Columns", b"/XRefStm", b"1 0 R", b"2 0 R", b"3 0 R", b"1 0 obj", b"2 0 obj", b"3 0 obj",
    b"endobj", b"stream\n", b"\nendstream", b"xref\n", b"0 4\n", b"0000000009 00000 n \n",
    b"trailer", b"startxref\n", b"0", b"1", b"12", b"9999999999", b"-3", b"1.5", b"%%EOF",
    b" ", b"\n", b"\r", b"%comment\n", b"true", b"null", b"#41",
]
FIXTURE_NAMES = sorted(EXPECTED)
FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(data: bytes, declared: str | None) -> DocumentInfo:
    fd, name = tempfile.mkstemp(prefix="outpost-doc-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        info = count_pages(name, declared)
    finally:
        os.unlink(name)
    assert isinstance(info, DocumentInfo)
    assert isinstance(info.format, str) and info.format
    assert info.pages is None or (isinstance(info.pages, int) and info.pages >= 0)
    assert info.colour is None or isinstance(info.colour, bool)
    assert sniff_format(data[:4096]) in (None, info.format)
    return info


@FUZZ
@given(
    prefix=st.sampled_from(PREFIXES),
    body=st.binary(max_size=4096),
    declared=st.sampled_from(DECLARED),
)
def test_fuzz_random_bytes(prefix: bytes, body: bytes, declared: str | None) -> None:
    check(prefix + body, declared)


@FUZZ
@given(
    name=st.sampled_from(FIXTURE_NAMES),
    cut=st.floats(min_value=0.0, max_value=1.0),
    flips=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=1.0), st.integers(0, 255)), max_size=8
    ),
    declared=st.sampled_from(DECLARED),
)
def test_fuzz_mutated_fixtures(
    name: str, cut: float, flips: list[tuple[float, int]], declared: str | None
) -> None:
    data = bytearray(fixture(name).read_bytes())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    check(bytes(data[: max(1, int(cut * len(data)))]), declared)


@FUZZ
@given(
    tokens=st.lists(st.sampled_from(PDF_TOKENS), max_size=200),
    tail=st.sampled_from([b"", b"\nstartxref\n9\n%%EOF\n", b"\nstartxref\n0\n%%EOF"]),
)
def test_fuzz_pdf_token_soup(tokens: list[bytes], tail: bytes) -> None:
    check(b"%PDF-1.5\n" + b" ".join(tokens) + tail, PDF)


@FUZZ
@given(
    big_endian=st.booleans(),
    body=st.lists(
        st.sampled_from(
            [b"\xc0\x43", b"\xc1\x43\x43", b"\xc8\xc0\x03abc", b"\xc8\xc1\x00\x01", b"\xf8\x03",
             b"\xf8\x0b", b"\x43", b"\x44", b"\x6a", b"\x63", b"\xb0", b"\xfa\x04\x00\x00\x00",
             b"\xfb\x02", b"\xd1\x01\x02\x03\x04", b"\xe5", b" ", b"\x1b", b"\xff", b"\x00"]
        ),
        max_size=100,
    ),
)
def test_fuzz_pclxl_token_soup(big_endian: bool, body: list[bytes]) -> None:
    binding = b"(" if big_endian else b")"
    info = check(binding + b" HP-PCL XL;2;0\n" + b"".join(body), None)
    assert info.format == PCLXL
