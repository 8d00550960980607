"""Document analysis: what a print job is, how many pages it has, whether it is colour.

This decides what a job costs, so it has to be right for honest documents and
must never fall over on dishonest or broken ones.

* :func:`sniff_format` recognises a format from the first bytes of a document
  (looking through a PJL/UEL job wrapper).
* :func:`count_pages` counts pages in pure Python, never running a subprocess
  and streaming from disk wherever the format allows: PDF (classic xref tables,
  cross-reference streams, object streams, incremental updates, linearized
  files, hybrid files, broken files, and encrypted files: readable as they are
  when the page tree is in plain objects, decrypted when the user password is
  empty), PostScript with DSC comments (and EPS), PWG/CUPS raster, Apple URF,
  PCL XL, and (single page) JPEG and PNG.  Colour is only reported where the
  format states it cheaply (raster colour spaces, PCL XL colour spaces and
  colours, JPEG/PNG channels); otherwise it is ``None``.
* :func:`detect_colour` asks ghostscript's ``inkcov`` device for PDF and
  PostScript.  It blocks: callers run it in a thread.
* :func:`analyse` combines the two.

Parsing errors never raise; they give ``pages=None``.  Only failing to open
the file raises (:class:`OSError`).  Work is bounded by the file size, so a
hostile document costs time in proportion to its length, not more.

Limits: page counts are of the document as sent, not of sheets or copies
(PostScript ``#copies``/``NumCopies``, PCL XL ``PageCopies`` and IPP
``copies`` are the caller's business).  PostScript is a programming language:
both the DSC comments and what ghostscript sees are under the submitter's
control, so for PostScript page counts and colour are best effort.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal, NamedTuple, TypeAlias

__all__ = [
    "CUPS_RASTER",
    "JPEG",
    "OCTET_STREAM",
    "PCL",
    "PCLXL",
    "PDF",
    "PNG",
    "POSTSCRIPT",
    "PWG_RASTER",
    "URF",
    "DocumentInfo",
    "analyse",
    "count_pages",
    "detect_colour",
    "sniff_format",
]

PDF = "application/pdf"
POSTSCRIPT = "application/postscript"
PWG_RASTER = "image/pwg-raster"
CUPS_RASTER = "application/vnd.cups-raster"
URF = "image/urf"
PCLXL = "application/vnd.hp-pclxl"
PCL = "application/vnd.hp-pcl"
JPEG = "image/jpeg"
PNG = "image/png"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class DocumentInfo:
    format: str  # detected MIME type, or the declared one / OCTET_STREAM when unknown
    pages: int | None  # None when the format is not countable
    colour: bool | None  # True if any page uses colour, False if all mono, None if unknown


# How much of the start of a file sniff_format() is given by count_pages().
_HEAD_BYTES = 8192
_CHUNK = 1 << 20


# --------------------------------------------------------------------------
# Format sniffing
# --------------------------------------------------------------------------

_UEL = b"\x1b%-12345X"
_PJL_LANGUAGE_RE = re.compile(rb"ENTER\s+LANGUAGE\s*=\s*([A-Za-z0-9_]+)", re.IGNORECASE)
_PJL_LANGUAGES = {b"POSTSCRIPT": POSTSCRIPT, b"PDF": PDF, b"PCLXL": PCLXL, b"PCL": PCL}
_PCLXL_HEADER_RE = re.compile(rb"[()] HP-PCL XL")


def _strip_pjl(head: bytes) -> tuple[int, str | None]:
    """Skip a leading UEL + PJL job header; return (body offset, PJL language)."""
    pos = 0
    language: str | None = None
    n = len(head)
    while pos < n:
        if head.startswith(_UEL, pos):
            pos += len(_UEL)
            continue
        c = head[pos]
        if c in b"\r\n\t \x00\x04":
            pos += 1
            continue
        if head[pos : pos + 4].upper() == b"@PJL":
            end = head.find(b"\n", pos)
            line = head[pos:] if end < 0 else head[pos:end]
            m = _PJL_LANGUAGE_RE.search(line)
            if m:
                language = _PJL_LANGUAGES.get(m.group(1).upper(), language)
            if end < 0:
                return n, language
            pos = end + 1
            continue
        break
    return pos, language


def sniff_format(head: bytes) -> str | None:
    """The MIME type recognised from the first bytes of a document, or None."""
    head = bytes(head)
    pos, language = _strip_pjl(head)
    body = head[pos:]
    if body.startswith(b"%PDF-"):
        return PDF
    if body.startswith((b"%!", b"\x04%!")) or body.startswith(b"\xc5\xd0\xd3\xc6"):
        return POSTSCRIPT
    if body.startswith(b"RaS2"):
        return PWG_RASTER
    if body.startswith((b"2SaR", b"RaS3", b"3SaR", b"RaSt", b"tSaR")):
        return CUPS_RASTER
    if body.startswith(b"UNIRAST\x00"):
        return URF
    if _PCLXL_HEADER_RE.match(body):
        return PCLXL
    if body.startswith(b"\xff\xd8\xff"):
        return JPEG
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if language is not None:  # the PJL job header names it
        return language
    if body.startswith(b"\x1bE"):
        return PCL
    # Junk in front of a PDF header is common (and tolerated by readers).
    if b"%PDF-" in head[:1024]:
        return PDF
    return None


def _normalise_mime(declared: str | None) -> str | None:
    if not declared:
        return None
    mime = declared.split(";", 1)[0].strip().lower()
    if not mime or mime == OCTET_STREAM:
        return None
    return mime


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


class _Malformed(Exception):
    """The document is not what it claims to be."""


_Counter = Callable[[BinaryIO, int, bytes], tuple[int | None, bool | None]]


def count_pages(path: str | os.PathLike[str], document_format: str | None = None) -> DocumentInfo:
    """Count pages without running any subprocess.

    *document_format* is the declared (IPP document-format) type; ``None`` or
    ``application/octet-stream`` means auto-detect.  When the content says
    otherwise the content wins.  Raises only :class:`OSError` (cannot open).
    """
    declared = _normalise_mime(document_format)
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
        sniffed = sniff_format(head)
        fmt = sniffed or declared or OCTET_STREAM
        counter = _COUNTERS.get(fmt)
        if counter is None:
            return DocumentInfo(fmt, None, None)
        try:
            pages, colour = counter(f, size, head)
        except Exception:  # malformed input of any kind: not countable
            pages, colour = None, None
    if pages is None:
        colour = None
    return DocumentInfo(fmt, pages, colour)


# Ghostscript's CMYK conversion turns neutral RGB (including plain RGB black,
# which most office documents use) into rich black with C, M and Y ink, so
# inkcov alone would call almost everything colour.  With UseFastColor the
# PostScript black generation / undercolour removal functions apply instead:
# BG = identity and UCR = identity + 0.03 move every neutral (and
# near-neutral, within ~8/255) pixel entirely to K, leaving C, M or Y only on
# pixels that really are coloured.  Colours specified directly in CMYK are
# taken literally.
_GS_INKCOV_ARGS = (
    "-q",
    "-dSAFER",
    "-dBATCH",
    "-dNOPAUSE",
    "-dUseFastColor",
    "-sDEVICE=inkcov",
)
_GS_PROLOGUE = ("-c", "{} setblackgeneration {0.03 add} setundercolorremoval", "-f")
# inkcov reports the fraction of pixels carrying each ink with five decimals;
# anything it prints as non-zero counts (a single coloured point is ~2e-5).
_COLOUR_THRESHOLD = 0.000005
_INKCOV_LINE_RE = re.compile(
    rb"^\s*(\d+(?:\.\d*)?)\s+(\d+(?:\.\d*)?)\s+(\d+(?:\.\d*)?)\s+(\d+(?:\.\d*)?)\s+CMYK\b",
    re.MULTILINE,
)
_GS_FORMATS = (PDF, POSTSCRIPT)


def _inkcov(
    path: str | os.PathLike[str], timeout: float
) -> list[tuple[float, float, float, float]] | None:
    """Per-page (C, M, Y, K) coverage from ghostscript, or None."""
    gs = shutil.which("gs")
    if gs is None:
        return None
    # An absolute path can never be mistaken for a gs switch.
    target = os.path.abspath(os.fspath(path))
    # The coverage goes to a file of its own, not stdout: a PostScript job can
    # print whatever it likes on stdout, including fake coverage lines.
    with tempfile.TemporaryDirectory(prefix="outpost-inkcov-") as tmp:
        report = os.path.join(tmp, "inkcov.txt")
        try:
            proc = subprocess.run(
                [gs, *_GS_INKCOV_ARGS, f"-sOutputFile={report}", *_GS_PROLOGUE, target],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
            if proc.returncode != 0:
                return None
            with open(report, "rb") as f:
                output = f.read(16 << 20)
        except (subprocess.TimeoutExpired, OSError):
            return None
    pages = [
        (float(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)))
        for m in _INKCOV_LINE_RE.finditer(output)
    ]
    return pages or None


def _is_colour(coverage: list[tuple[float, float, float, float]]) -> bool:
    return any(max(c, m, y) > _COLOUR_THRESHOLD for c, m, y, _k in coverage)


def _detected_format(path: str | os.PathLike[str], document_format: str | None) -> str | None:
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return sniff_format(head) or _normalise_mime(document_format)


def detect_colour(
    path: str | os.PathLike[str], document_format: str, timeout: float = 60.0
) -> bool | None:
    """Whether any page of a document puts colour on paper.

    PDF and PostScript: ghostscript's inkcov device; ``None`` if gs is
    missing, times out or fails.  Other formats: what the format itself says
    (raster colour spaces, PCL XL colours, image channels: see
    :func:`count_pages`), ``None`` where it says nothing.  Blocking.
    """
    try:
        fmt = _detected_format(path, document_format)
    except OSError:
        return None
    if fmt not in _GS_FORMATS:
        try:
            return count_pages(path, document_format).colour
        except OSError:
            return None
    coverage = _inkcov(path, timeout)
    if coverage is None:
        return None
    return _is_colour(coverage)


def analyse(
    path: str | os.PathLike[str],
    document_format: str | None = None,
    *,
    use_ghostscript: bool = True,
    timeout: float = 60.0,
) -> DocumentInfo:
    """count_pages(), then ghostscript colour detection for PDF/PostScript.

    When ghostscript runs, it also supplies the page count where the parser
    had none (encrypted object streams, PostScript without DSC comments).
    For PostScript, whose DSC comments are only claims, the larger of the DSC
    and interpreter counts is taken: both are under the submitter's control,
    and they agree for honest documents.  Blocking.
    """
    info = count_pages(path, document_format)
    if not use_ghostscript or info.format not in _GS_FORMATS or info.colour is not None:
        return info
    coverage = _inkcov(path, timeout)
    if coverage is None:
        return info
    pages = info.pages
    if pages is None:
        pages = len(coverage)
    elif info.format == POSTSCRIPT:
        pages = max(pages, len(coverage))
    return DocumentInfo(info.format, pages, _is_colour(coverage))


# --------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------


class _Ref(NamedTuple):
    num: int
    gen: int


class _Keyword(str):
    """A bare PDF keyword (other than true/false/null)."""


class _Name(str):
    """A PDF name (without the slash)."""


class _Stream:
    __slots__ = ("dict", "length", "start")

    def __init__(self, d: dict[str, _Obj], start: int, length: int) -> None:
        self.dict = d
        self.start = start
        self.length = length


_Obj: TypeAlias = (
    "bool | int | float | bytes | str | _Ref | _Stream | list[_Obj] | dict[str, _Obj] | None"
)


class _NeedMore(Exception):
    """The parse ran off the end of a window that does not reach EOF."""


class _Exhausted(Exception):
    """The PDF has cost more work than any honest file of its size could."""


_WS = b"\x00\t\n\x0c\r "
_S = rb"[\x00\t\n\x0c\r ]"  # one PDF white-space character
_WS_RE = re.compile(rb"(?:[\x00\t\n\x0c\r ]+|%[^\r\n]*)*")
_REGULAR_RE = re.compile(rb"[^\x00\t\n\x0c\r ()<>\[\]{}/%]*")
_NUMBER_RE = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)")
_INT_RE = re.compile(rb"[+-]?\d+")
_REF_TAIL_RE = re.compile(_S + rb"+(\d{1,10})" + _S + rb"+R(?![^\x00\t\n\x0c\r ()<>\[\]{}/%])")
_OBJ_HEADER_RE = re.compile(_S + rb"*(\d{1,10})" + _S + rb"+(\d{1,5})" + _S + rb"+obj\b")
_OBJ_SCAN_RE = re.compile(rb"(?<![0-9])(\d{1,10})" + _S + rb"+(\d{1,5})" + _S + rb"+obj\b")
_XREF_SUBSECTION_RE = re.compile(_S + rb"*(\d+)" + _S + rb"+(\d+)")
_XREF_ENTRY_RE = re.compile(_S + rb"*(\d{1,10})" + _S + rb"+(\d{1,5})" + _S + rb"+([fn])")
_NAME_ESCAPE_RE = re.compile(rb"#([0-9A-Fa-f]{2})")
_STRING_SPECIAL_RE = re.compile(rb"\\[\x00-\xff]|[()]")
_MAX_DEPTH = 64
_MAX_DECODED = 64 << 20  # decoded xref / object streams beyond this are refused
_MAX_TREE_NODES = 25_000  # beyond this, walking costs seconds: trust /Count


class _Lexer:
    """Parses PDF objects out of a byte window of the file."""

    __slots__ = ("buf", "eof")

    def __init__(self, buf: bytes, eof: bool) -> None:
        self.buf = buf
        self.eof = eof

    def _short(self) -> Exception:
        return _Malformed("truncated") if self.eof else _NeedMore()

    def skip_ws(self, pos: int) -> int:
        m = _WS_RE.match(self.buf, pos)
        return m.end() if m else pos

    def value(self, pos: int, depth: int = 0) -> tuple[_Obj, int]:
        if depth > _MAX_DEPTH:
            raise _Malformed("nesting too deep")
        buf = self.buf
        pos = self.skip_ws(pos)
        if pos >= len(buf):
            raise self._short()
        c = buf[pos]
        if c == 0x2F:  # /
            m = _REGULAR_RE.match(buf, pos + 1)
            assert m is not None
            end = m.end()
            if end >= len(buf) and not self.eof:
                raise _NeedMore()
            raw = m.group()
            if b"#" in raw:
                raw = _NAME_ESCAPE_RE.sub(lambda mm: bytes([int(mm.group(1), 16)]), raw)
            return _Name(raw.decode("latin-1")), end
        if c == 0x3C:  # <
            if buf[pos + 1 : pos + 2] == b"<":
                return self._dict(pos + 2, depth)
            end = buf.find(b">", pos + 1)
            if end < 0:
                raise self._short()
            digits = re.sub(rb"[^0-9A-Fa-f]", b"", buf[pos + 1 : end])
            if len(digits) % 2:
                digits += b"0"
            return bytes.fromhex(digits.decode("ascii")), end + 1
        if c == 0x5B:  # [
            items: list[_Obj] = []
            pos += 1
            while True:
                pos = self.skip_ws(pos)
                if pos >= len(buf):
                    raise self._short()
                if buf[pos] == 0x5D:  # ]
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                if isinstance(item, _Keyword):
                    raise _Malformed(f"keyword {item!r} in array")
                items.append(item)
        if c == 0x28:  # (
            return self._string(pos)
        if c in b"+-.0123456789":
            m = _NUMBER_RE.match(buf, pos)
            r = _REGULAR_RE.match(buf, pos)
            assert r is not None
            end = r.end()
            if end + 32 >= len(buf) and not self.eof:
                raise _NeedMore()
            token = r.group()
            if m is None or m.end() != end:
                return 0, end  # malformed number: be lenient, as readers are
            if _INT_RE.fullmatch(token):
                num = int(token)
                t = _REF_TAIL_RE.match(buf, end)
                if t is not None and num >= 0:
                    return _Ref(num, int(t.group(1))), t.end()
                return num, end
            return float(token), end
        if c in b")>]}{":
            raise _Malformed(f"unexpected delimiter {chr(c)!r}")
        r = _REGULAR_RE.match(buf, pos)
        assert r is not None
        end = r.end()
        if end >= len(buf) and not self.eof:
            raise _NeedMore()
        word = r.group()
        if word == b"true":
            return True, end
        if word == b"false":
            return False, end
        if word == b"null":
            return None, end
        if not word:
            raise _Malformed("empty token")
        return _Keyword(word.decode("latin-1")), end

    def _dict(self, pos: int, depth: int) -> tuple[_Obj, int]:
        buf = self.buf
        d: dict[str, _Obj] = {}
        while True:
            pos = self.skip_ws(pos)
            if pos >= len(buf):
                raise self._short()
            if buf[pos] == 0x3E:  # >
                if buf[pos + 1 : pos + 2] == b">":
                    return d, pos + 2
                if pos + 1 >= len(buf):
                    raise self._short()
                raise _Malformed("bad dictionary end")
            key, pos = self.value(pos, depth + 1)
            if not isinstance(key, _Name):
                raise _Malformed("dictionary key is not a name")
            val, pos = self.value(pos, depth + 1)
            if isinstance(val, _Keyword):
                raise _Malformed(f"keyword {val!r} in dictionary")
            d[key] = val

    def _string(self, pos: int) -> tuple[_Obj, int]:
        buf = self.buf
        depth = 0
        for m in _STRING_SPECIAL_RE.finditer(buf, pos):
            c = m.group()
            if c == b"(":
                depth += 1
            elif c == b")":
                depth -= 1
                if depth == 0:
                    return _unescape(buf[pos + 1 : m.start()]), m.end()
            # a backslash and the character it escapes are consumed together
        raise self._short()


def _as_int(obj: _Obj) -> int | None:
    if isinstance(obj, bool):
        return None
    if isinstance(obj, int):
        return obj
    return None


def _as_list(obj: _Obj) -> list[_Obj]:
    if isinstance(obj, list):
        return obj
    if obj is None:
        return []
    return [obj]


class _XrefEntry(NamedTuple):
    kind: int  # 0 free, 1 at byte offset, 2 compressed in an object stream
    a: int  # offset (kind 1) or object stream number (kind 2)
    b: int  # generation (kind 1) or index in the object stream (kind 2)


class _Pdf:
    def __init__(self, f: BinaryIO, size: int, head: bytes) -> None:
        self.f = f
        self.size = size
        hdr = head.find(b"%PDF-")
        self.base = hdr if hdr > 0 else 0  # bytes of junk in front of the header
        self.xref: dict[int, _XrefEntry] = {}
        self.trailer: dict[str, _Obj] = {}
        self.cache: dict[int, _Obj] = {}
        self.objstms: dict[int, tuple[bytes, dict[int, int], int]] = {}
        self.resolving: set[int] = set()
        self.shift = 0  # added to every offset: nonzero for junk-prefixed files
        self.crypt: _Decryptor | None = None
        # Bytes the parser may look at in all, re-reads included: enough for
        # any honest file, but bounded for ones built to make it rescan.
        self.budget = (32 << 20) + 4 * size

    # -- raw access ----------------------------------------------------------

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or offset >= self.size:
            return b""
        self.budget -= min(n, self.size - offset)
        if self.budget < 0:
            raise _Exhausted()
        self.f.seek(offset)
        return self.f.read(n)

    def parse_at(self, offset: int, fn: Callable[[_Lexer], tuple[_Obj, int]]) -> tuple[_Obj, int]:
        """Run *fn* on a window at *offset*, growing the window as needed."""
        window = 1024
        while True:
            data = self.read_at(offset, window)
            eof = offset + len(data) >= self.size
            try:
                obj, end = fn(_Lexer(data, eof))
                return obj, offset + end
            except _NeedMore:
                if eof or window >= 64 << 20:
                    raise _Malformed("object too large") from None
                window *= 8

    def indirect_at(self, offset: int, expect: int | None = None) -> _Obj:
        """The object defined at *offset* ("n g obj ... endobj")."""

        def parse(lx: _Lexer) -> tuple[_Obj, int]:
            m = _OBJ_HEADER_RE.match(lx.buf)
            if m is None:
                if len(lx.buf) < 40 and not lx.eof:
                    raise _NeedMore()
                raise _Malformed("no object header")
            if expect is not None and int(m.group(1)) != expect:
                raise _Malformed("object number mismatch")
            val, pos = lx.value(m.end())
            if isinstance(val, _Keyword):  # "n g obj endobj": an empty object
                return None, pos
            if isinstance(val, dict):
                p = lx.skip_ws(pos)
                if lx.buf.startswith(b"stream", p):
                    p += 6
                    if lx.buf.startswith(b"\r\n", p):
                        p += 2
                    elif lx.buf[p : p + 1] in (b"\n", b"\r"):
                        p += 1
                    return _Stream(val, p, -1), p  # length is resolved below
                if p + 6 >= len(lx.buf) and not lx.eof:
                    raise _NeedMore()
            return val, pos

        obj, end = self.parse_at(offset, parse)
        if isinstance(obj, _Stream):
            start = end
            length = _as_int(self.resolve(obj.dict.get("Length")))
            if length is None or length < 0 or start + length > self.size:
                length = self.find_endstream(start)
            return _Stream(obj.dict, start, length)
        return obj

    def find_endstream(self, start: int) -> int:
        pos = start
        while pos < self.size:
            chunk = self.read_at(pos, _CHUNK + 16)
            i = chunk.find(b"endstream")
            if i >= 0:
                end = pos + i
                tail = self.read_at(max(start, end - 2), end - max(start, end - 2))
                return end - start - (len(tail) - len(tail.rstrip(b"\r\n")))
            if len(chunk) <= 16:
                break
            pos += len(chunk) - 16
        raise _Malformed("unterminated stream")

    def stream_data(self, s: _Stream, num: int | None = None) -> bytes:
        """Decoded stream data; *num* given: decrypt first (as object *num*)."""
        if s.length > _MAX_DECODED:
            raise _Malformed("stream too large")
        raw = self.read_at(s.start, s.length)
        if num is not None and self.crypt is not None:
            entry = self.xref.get(num)
            gen = entry.b if entry is not None and entry.kind == 1 else 0
            raw = self.crypt.decrypt(num, gen, raw)
        return _decode_stream(raw, s.dict, self.resolve)

    # -- objects -------------------------------------------------------------

    def resolve(self, obj: _Obj) -> _Obj:
        if isinstance(obj, _Ref):
            return self.get(obj.num)
        return obj

    def get(self, num: int) -> _Obj:
        if num in self.cache:
            return self.cache[num]
        if num in self.resolving:
            raise _Malformed("reference loop")
        entry = self.xref.get(num)
        if entry is None or entry.kind == 0:
            return None
        self.resolving.add(num)
        try:
            if entry.kind == 1:
                obj = self.indirect_at(entry.a, num)
            else:
                obj = self.from_objstm(entry.a, entry.b, num)
        finally:
            self.resolving.discard(num)
        if len(self.cache) < 4096:  # leaves are looked up once; keep memory flat
            self.cache[num] = obj
        return obj

    def objstm(self, stm: int) -> tuple[bytes, dict[int, int], int]:
        cached = self.objstms.get(stm)
        if cached is not None:
            return cached
        s = self.get(stm)
        if not isinstance(s, _Stream):
            raise _Malformed("object stream missing")
        data = self.stream_data(s, stm)
        n = _as_int(self.resolve(s.dict.get("N"))) or 0
        first = _as_int(self.resolve(s.dict.get("First")))
        if first is None or first < 0 or n < 0:
            raise _Malformed("bad object stream")
        ints = [int(x) for x in re.findall(rb"\d+", data[:first])[: 2 * n]]
        offsets: dict[int, int] = {}
        for i in range(0, len(ints) - 1, 2):
            offsets.setdefault(ints[i], ints[i + 1])
        if sum(len(v[0]) for v in self.objstms.values()) + len(data) > _MAX_DECODED:
            self.objstms.clear()
        result = (data, offsets, first)
        self.objstms[stm] = result
        return result

    def from_objstm(self, stm: int, index: int, num: int) -> _Obj:
        data, offsets, first = self.objstm(stm)
        off = offsets.get(num)
        if off is None:
            raise _Malformed("object not in its object stream")
        val, _ = _Lexer(data, True).value(first + off)
        if isinstance(val, _Keyword):
            raise _Malformed("keyword in object stream")
        return val

    # -- cross-reference -----------------------------------------------------

    def load_xref(self) -> None:
        tail_len = min(self.size, 4096)
        tail = self.read_at(self.size - tail_len, tail_len)
        i = tail.rfind(b"startxref")
        if i < 0:
            tail_len = min(self.size, 1 << 20)
            tail = self.read_at(self.size - tail_len, tail_len)
            i = tail.rfind(b"startxref")
        if i < 0:
            raise _Malformed("no startxref")
        m = re.match(rb"startxref\s+(\d+)", tail[i:])
        if m is None:
            raise _Malformed("bad startxref")
        offset = int(m.group(1))
        try:
            self.read_chain(offset)
        except (_Malformed, ValueError, zlib.error, struct.error):
            if self.base == 0:
                raise
            # Offsets counted from "%PDF-" rather than from the file start.
            self.xref.clear()
            self.trailer = {}
            self.shift = self.base
            self.read_chain(offset)
            for num, e in list(self.xref.items()):
                if e.kind == 1:
                    self.xref[num] = _XrefEntry(1, e.a + self.shift, e.b)

    def read_chain(self, offset: int) -> None:
        """Read the newest cross-reference section and its /Prev chain."""
        seen: set[int] = set()
        off: int | None = offset
        while off is not None and off not in seen and len(seen) < 10_000:
            seen.add(off)
            try:
                trailer = self.read_section(off + self.shift)
            except (_Malformed, ValueError, zlib.error, struct.error):
                if not seen - {off}:
                    raise  # the newest section must be readable
                break  # a broken older section: keep what the newer ones say
            for key, val in trailer.items():
                self.trailer.setdefault(key, val)  # the newest trailer wins
            prev = _as_int(trailer.get("Prev"))
            off = prev if prev is not None and prev >= 0 else None

    def read_section(self, offset: int) -> dict[str, _Obj]:
        head = self.read_at(offset, 32).lstrip(_WS)
        if head.startswith(b"xref"):
            return self.read_table(offset)
        obj = self.indirect_at(offset)
        if not isinstance(obj, _Stream) or obj.dict.get("Type") != "XRef":
            raise _Malformed("startxref does not point at a cross-reference section")
        self.merge(self.read_xref_stream(obj))
        return obj.dict

    def merge(self, section: dict[int, _XrefEntry]) -> None:
        """Add an older section's entries: newer sections have already won."""
        for num, entry in section.items():
            self.xref.setdefault(num, entry)

    def read_table(self, offset: int) -> dict[str, _Obj]:
        head = self.read_at(offset, 64)
        pos = offset + head.find(b"xref") + 4
        sub_re = _XREF_SUBSECTION_RE
        entry_re = _XREF_ENTRY_RE
        section: dict[int, _XrefEntry] = {}
        while True:
            window = self.read_at(pos, 64)
            m = sub_re.match(window)
            if m is None:
                break
            start, count = int(m.group(1)), int(m.group(2))
            pos += m.end()
            if count > self.size // 18 + 1:
                raise _Malformed("xref subsection larger than the file")
            data = self.read_at(pos, count * 21 + 64)
            p = 0
            for i in range(count):
                e = entry_re.match(data, p)
                if e is None:
                    raise _Malformed("bad xref entry")
                p = e.end()
                num = start + i
                off = int(e.group(1))
                if e.group(3) == b"n" and off > 0:
                    section.setdefault(num, _XrefEntry(1, off, int(e.group(2))))
                else:
                    section.setdefault(num, _XrefEntry(0, 0, 0))
            pos += p
        window = self.read_at(pos, 64)
        t = re.match(rb"[\x00\t\n\x0c\r ]*trailer", window)
        if t is None:
            raise _Malformed("no trailer after xref table")
        trailer, _ = self.parse_at(pos + t.end(), lambda lx: lx.value(0))
        if not isinstance(trailer, dict):
            raise _Malformed("trailer is not a dictionary")
        stm = _as_int(trailer.get("XRefStm"))
        if stm is not None:
            # Hybrid-reference file: the stream supplies the objects that the
            # table leaves out or lists as free (those in object streams).
            try:
                obj = self.indirect_at(stm + self.shift)
                hidden = self.read_xref_stream(obj) if isinstance(obj, _Stream) else {}
            except (_Malformed, ValueError, zlib.error):
                hidden = {}
            for num, entry in hidden.items():
                current = section.get(num)
                if current is None or (current.kind == 0 and entry.kind != 0):
                    section[num] = entry
        self.merge(section)
        return trailer

    def read_xref_stream(self, s: _Stream) -> dict[int, _XrefEntry]:
        d = s.dict
        data = self.stream_data(s)
        widths = [_as_int(w) for w in _as_list(d.get("W"))]
        if len(widths) < 3 or any(w is None or w < 0 or w > 8 for w in widths):
            raise _Malformed("bad /W")
        w1, w2, w3 = (w or 0 for w in widths[:3])
        row = w1 + w2 + w3
        if row == 0:
            raise _Malformed("empty /W")
        size = _as_int(d.get("Size")) or 0
        index = [_as_int(x) for x in _as_list(d.get("Index"))] or [0, size]
        pos = 0
        section: dict[int, _XrefEntry] = {}
        for k in range(0, len(index) - 1, 2):
            start, count = index[k], index[k + 1]
            if start is None or count is None or start < 0 or count < 0:
                raise _Malformed("bad /Index")
            for i in range(count):
                if pos + row > len(data):
                    return section
                kind = int.from_bytes(data[pos : pos + w1], "big") if w1 else 1
                a = int.from_bytes(data[pos + w1 : pos + w1 + w2], "big")
                b = int.from_bytes(data[pos + w1 + w2 : pos + row], "big")
                pos += row
                num = start + i
                if num in section:
                    continue
                if kind == 1 and a > 0:
                    section[num] = _XrefEntry(1, a, b)
                elif kind == 2:
                    section[num] = _XrefEntry(2, a, b)
                elif kind in (0, 1):
                    section[num] = _XrefEntry(0, 0, 0)
                # other types are reserved: ignore, as the spec says
        return section

    # -- pages ---------------------------------------------------------------

    def count_tree(self, pages: _Obj) -> int | None:
        """Leaves of the page tree, or None when it cannot be walked fully."""
        count = 0
        visited: set[int] = set()
        stack: list[_Obj] = [pages]
        nodes = 0
        while stack:
            item = stack.pop()
            nodes += 1
            if nodes > _MAX_TREE_NODES:
                return None
            if isinstance(item, _Ref):
                if item.num in visited:
                    return None
                visited.add(item.num)
                try:
                    node = self.get(item.num)
                except (_Malformed, ValueError, zlib.error):
                    return None
            else:
                node = item
            if not isinstance(node, dict):
                return None
            kids = self.resolve(node.get("Kids"))
            ntype = node.get("Type")
            if ntype == "Pages" or (ntype != "Page" and isinstance(kids, list)):
                if not isinstance(kids, list):
                    return None
                stack.extend(reversed(kids))
            else:
                count += 1
        return count

    def pages_from_root(self, root_ref: _Obj) -> int | None:
        root = self.resolve(root_ref)
        if not isinstance(root, dict):
            return None
        pages = root.get("Pages")
        walked = self.count_tree(pages)
        if walked is not None:
            return walked
        try:
            top = self.resolve(pages)
        except (_Malformed, ValueError, zlib.error):
            return None
        if isinstance(top, dict):
            n = _as_int(self.resolve(top.get("Count")))
            if n is not None and n >= 0:
                return n
        return None

    def setup_encryption(self, trailer: dict[str, _Obj]) -> None:
        """Prepare to read object streams of a file encrypted without a user password."""
        if self.crypt is not None or "Encrypt" not in trailer:
            return
        try:
            encrypt = self.resolve(trailer["Encrypt"])
            ids = _as_list(self.resolve(trailer.get("ID")))
            first_id = self.resolve(ids[0]) if ids else b""
            if isinstance(encrypt, dict):
                self.crypt = _Decryptor.open(
                    encrypt, first_id if isinstance(first_id, bytes) else b""
                )
        except (_Malformed, ValueError, zlib.error, struct.error):
            self.crypt = None

    def count(self) -> int | None:
        try:
            self.load_xref()
            self.setup_encryption(self.trailer)
            root = self.trailer.get("Root")
            if root is not None:
                n = self.pages_from_root(root)
                if n is not None:
                    return n
        except (_Malformed, ValueError, zlib.error, struct.error):
            pass
        return self.reconstruct()

    # -- broken files --------------------------------------------------------

    def reconstruct(self) -> int | None:
        """Rebuild the cross-reference by scanning for objects, then retry."""
        obj_re = _OBJ_SCAN_RE
        offsets: dict[int, int] = {}
        gens: dict[int, int] = {}
        trailers: list[int] = []
        pos = 0
        overlap = 64
        while pos < self.size:
            chunk = self.read_at(pos, _CHUNK)
            if not chunk:
                break
            last = pos + len(chunk) >= self.size
            limit = len(chunk) if last else len(chunk) - overlap
            for m in obj_re.finditer(chunk):
                if m.start() < limit:
                    offsets[int(m.group(1))] = pos + m.start()
                    gens[int(m.group(1))] = int(m.group(2))
            for m in re.finditer(rb"trailer[\x00\t\n\x0c\r ]*<<", chunk):
                if m.start() < limit:
                    trailers.append(pos + m.start() + 7)
            if last:
                break
            pos += limit
        self.xref = {num: _XrefEntry(1, off, gens[num]) for num, off in offsets.items()}
        self.cache.clear()
        self.objstms.clear()
        roots: list[tuple[int, _Obj]] = []
        catalogs: list[tuple[int, int]] = []
        page_objects: set[int] = set()
        objstms: list[int] = []
        encrypted: list[tuple[int, dict[str, _Obj]]] = []
        for num, off in sorted(offsets.items(), key=lambda kv: kv[1]):
            try:
                obj = self.get(num)
            except (_Malformed, ValueError, zlib.error, struct.error):
                continue
            d = obj.dict if isinstance(obj, _Stream) else obj
            if not isinstance(d, dict):
                continue
            t = d.get("Type")
            if t == "Page":
                page_objects.add(num)
            elif t == "Catalog":
                catalogs.append((off, num))
            elif t == "ObjStm":
                objstms.append(num)
            elif t == "XRef" and "Root" in d:
                roots.append((off, d["Root"]))
                if "Encrypt" in d:
                    encrypted.append((off, d))
        for off in trailers:
            try:
                t, _ = self.parse_at(off, lambda lx: lx.value(0))
            except (_Malformed, ValueError):
                continue
            if isinstance(t, dict) and "Root" in t:
                roots.append((off, t["Root"]))
            if isinstance(t, dict) and "Encrypt" in t:
                encrypted.append((off, t))
        for _, t in sorted(encrypted, key=lambda e: e[0], reverse=True)[:1]:
            self.setup_encryption(t)
        for stm in objstms:
            try:
                _, members, _ = self.objstm(stm)
            except (_Malformed, ValueError, zlib.error):
                continue
            for idx, num in enumerate(members):
                if num not in self.xref:
                    self.xref[num] = _XrefEntry(2, stm, idx)
                    try:
                        obj = self.get(num)
                    except (_Malformed, ValueError, zlib.error):
                        continue
                    if isinstance(obj, dict):
                        if obj.get("Type") == "Page":
                            page_objects.add(num)
                        elif obj.get("Type") == "Catalog":
                            catalogs.append((self.size, num))
        roots.sort(key=lambda r: r[0])
        candidates = [r for _, r in reversed(roots)]
        candidates += [_Ref(num, 0) for _, num in sorted(catalogs, reverse=True)]
        for root in candidates:
            try:
                n = self.pages_from_root(root)
            except (_Malformed, ValueError, zlib.error, struct.error):
                continue
            if n is not None:
                return n
        return len(page_objects) or None


_ESCAPES = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("("): b"(",
    ord(")"): b")",
    ord("\\"): b"\\",
}
_ESCAPE_RE = re.compile(rb"\\([0-7]{1,3}|\r\n|[\x00-\xff])|\r\n?")


def _unescape(raw: bytes) -> bytes:
    """The value of a literal string's contents (escapes, octal, line ends)."""
    if b"\\" not in raw and b"\r" not in raw:
        return bytes(raw)

    def sub(m: re.Match[bytes]) -> bytes:
        esc = m.group(1)
        if esc is None:
            return b"\n"  # an unescaped end of line reads as LF
        if esc[0] in b"01234567":
            return bytes([int(esc, 8) & 0xFF])
        if esc in (b"\r", b"\n", b"\r\n"):
            return b""  # line continuation
        return _ESCAPES.get(esc[0], esc)

    return _ESCAPE_RE.sub(sub, raw)


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xFF
        s[i], s[j] = s[j], s[i]
    out = bytearray(len(data))
    i = j = 0
    for k, byte in enumerate(data):
        i = (i + 1) & 0xFF
        j = (j + s[i]) & 0xFF
        s[i], s[j] = s[j], s[i]
        out[k] = byte ^ s[(s[i] + s[j]) & 0xFF]
    return bytes(out)


def _aes_cbc(key: bytes, iv: bytes, data: bytes, *, encrypt: bool = False) -> bytes:
    # cryptography is already a dependency of the appliance; imported lazily
    # so that everything else works without it.
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise _Malformed("AES needs the cryptography package") from None
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


_PASSWORD_PAD = bytes.fromhex(
    "28bf4e5e4e758a4164004e56fffa01082e2e00b6d0683e802f0ca9fe6453697a"
)


def _hash_r6(password: bytes, salt: bytes, udata: bytes) -> bytes:
    """ISO 32000-2 algorithm 2.B (revision 6 password hash)."""
    k = hashlib.sha256(password + salt + udata).digest()
    i = 0
    while True:
        k1 = (password + k + udata) * 64
        e = _aes_cbc(k[:16], k[16:32], k1, encrypt=True)
        h = sum(e[:16]) % 3
        k = (hashlib.sha256, hashlib.sha384, hashlib.sha512)[h](e).digest()
        i += 1
        if i >= 64 and e[-1] <= i - 32:
            return k[:32]


class _Decryptor:
    """The standard security handler, for files whose user password is empty.

    Such files (owner password only: "permissions" PDFs) open in any viewer,
    and their object streams hold the page tree.  Anything else (a real user
    password, another handler) is not decrypted.
    """

    def __init__(self, key: bytes, method: str, revision: int) -> None:
        self.key = key
        self.method = method  # "RC4", "AESV2", "AESV3" or "None"
        self.revision = revision

    @classmethod
    def open(cls, d: dict[str, _Obj], first_id: bytes) -> _Decryptor | None:
        if d.get("Filter") != "Standard":
            return None
        v = _as_int(d.get("V")) or 0
        r = _as_int(d.get("R")) or 0
        o, u = d.get("O"), d.get("U")
        if not isinstance(o, bytes) or not isinstance(u, bytes):
            return None
        method = "RC4"
        if v >= 4:
            cfs = d.get("CF")
            cf = cfs.get(str(d.get("StmF", "Identity"))) if isinstance(cfs, dict) else None
            cfm = cf.get("CFM") if isinstance(cf, dict) else None
            if d.get("StmF", "Identity") == "Identity" or cfm == "None":
                method = "None"
            elif cfm in ("AESV2", "AESV3"):
                method = str(cfm)
            elif cfm != "V2":
                return None
        if r in (5, 6):
            if len(u) < 48:
                return None
            check = (
                _hash_r6(b"", u[32:40], b"") if r == 6 else hashlib.sha256(u[32:40]).digest()
            )
            if check != u[:32]:
                return None  # a user password is needed
            ue = d.get("UE")
            if not isinstance(ue, bytes) or len(ue) < 32:
                return None
            ikey = _hash_r6(b"", u[40:48], b"") if r == 6 else hashlib.sha256(u[40:48]).digest()
            key = _aes_cbc(ikey, bytes(16), ue[:32])
            return cls(key, "None" if method == "None" else "AESV3", r)
        if r not in (2, 3, 4):
            return None
        length = (_as_int(d.get("Length")) or 40) // 8 if r >= 3 else 5
        length = max(5, min(16, length))
        p = (_as_int(d.get("P")) or 0) & 0xFFFFFFFF
        h = hashlib.md5(_PASSWORD_PAD + o[:32] + struct.pack("<I", p) + first_id)
        if r >= 4 and d.get("EncryptMetadata") is False:
            h.update(b"\xff\xff\xff\xff")
        key = h.digest()
        if r >= 3:
            for _ in range(50):
                key = hashlib.md5(key[:length]).digest()
        key = key[:length]
        # check the empty user password against /U (algorithms 4 and 5)
        if r == 2:
            ok = _rc4(key, _PASSWORD_PAD) == u[:32]
        else:
            x = _rc4(key, hashlib.md5(_PASSWORD_PAD + first_id).digest())
            for i in range(1, 20):
                x = _rc4(bytes(b ^ i for b in key), x)
            ok = x == u[:16]
        return cls(key, method, r) if ok else None

    def decrypt(self, num: int, gen: int, data: bytes) -> bytes:
        if self.method == "None":
            return data
        if self.method == "AESV3":
            key = self.key
        else:
            salt = b"sAlT" if self.method == "AESV2" else b""
            seed = self.key + struct.pack("<I", num)[:3] + struct.pack("<I", gen)[:2] + salt
            key = hashlib.md5(seed).digest()[: min(len(self.key) + 5, 16)]
        if self.method == "RC4":
            return _rc4(key, data)
        if len(data) < 32 or len(data) % 16:
            raise _Malformed("bad AES stream")
        plain = _aes_cbc(key, data[:16], data[16:])
        pad = plain[-1]
        return plain[:-pad] if 1 <= pad <= 16 else plain


def _png_unpredict(data: bytes, columns: int, colors: int, bpc: int) -> bytes:
    bpp = max(1, (colors * bpc + 7) // 8)
    rowlen = (colors * bpc * columns + 7) // 8
    if rowlen <= 0:
        raise _Malformed("bad predictor parameters")
    if rowlen >= len(data):  # not even one row (also guards huge /Columns)
        return b""
    out = bytearray()
    prev = bytearray(rowlen)
    pos = 0
    n = len(data)
    while pos < n:
        ftype = data[pos]
        raw = data[pos + 1 : pos + 1 + rowlen]
        pos += 1 + rowlen
        if len(raw) < rowlen:
            break
        cur = bytearray(raw)
        if ftype == 0:
            pass
        elif ftype == 1:
            for i in range(bpp, rowlen):
                cur[i] = (cur[i] + cur[i - bpp]) & 0xFF
        elif ftype == 2:
            cur = bytearray((a + b) & 0xFF for a, b in zip(cur, prev, strict=True))
        elif ftype == 3:
            for i in range(rowlen):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(rowlen):
                left = cur[i - bpp] if i >= bpp else 0
                up = prev[i]
                ul = prev[i - bpp] if i >= bpp else 0
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                cur[i] = (cur[i] + pred) & 0xFF
        else:
            raise _Malformed("bad PNG predictor")
        out += cur
        prev = cur
    return bytes(out)


def _decode_stream(raw: bytes, d: dict[str, _Obj], resolve: Callable[[_Obj], _Obj]) -> bytes:
    filters = _as_list(resolve(d.get("Filter")))
    parms = _as_list(resolve(d.get("DecodeParms")))
    data = raw
    for i, flt in enumerate(filters):
        flt = resolve(flt)
        parm = resolve(parms[i]) if i < len(parms) else None
        if flt in ("FlateDecode", "Fl"):
            dec = zlib.decompressobj()
            try:
                data = dec.decompress(data, _MAX_DECODED)
            except zlib.error:
                raise _Malformed("bad Flate data") from None
            if dec.unconsumed_tail:
                raise _Malformed("stream decodes too large")
        elif flt in ("ASCIIHexDecode", "AHx"):
            hexdigits = re.sub(rb"[^0-9A-Fa-f]", b"", data.split(b">", 1)[0])
            if len(hexdigits) % 2:
                hexdigits += b"0"
            data = bytes.fromhex(hexdigits.decode("ascii"))
        elif flt in ("ASCII85Decode", "A85"):
            body = re.sub(rb"[\x00\t\n\x0c\r ]", b"", data.split(b"~>", 1)[0])
            if body.startswith(b"<~"):
                body = body[2:]
            data = base64.a85decode(body)
        elif flt == "Crypt":
            continue
        else:
            raise _Malformed(f"unsupported filter {flt!r}")
        if isinstance(parm, dict):
            predictor = _as_int(resolve(parm.get("Predictor"))) or 1
            if predictor >= 10:
                data = _png_unpredict(
                    data,
                    _as_int(resolve(parm.get("Columns"))) or 1,
                    _as_int(resolve(parm.get("Colors"))) or 1,
                    _as_int(resolve(parm.get("BitsPerComponent"))) or 8,
                )
            elif predictor != 1:
                raise _Malformed("unsupported predictor")
    return data


def _count_pdf(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    return _Pdf(f, size, head).count(), None


# --------------------------------------------------------------------------
# PostScript (DSC)
# --------------------------------------------------------------------------

# Searched for as a literal-prefixed pattern (fast); being at the start of a
# line is checked separately.
_DSC_RE = re.compile(
    rb"%%(Pages|Page|BeginDocument|EndDocument|BeginData|EndData"
    rb"|BeginBinary|EndBinary|Trailer)(:?)([^\r\n]*)"
)
_DSC_NESTING_OPEN = {b"BeginDocument", b"BeginData", b"BeginBinary"}
_DSC_NESTING_CLOSE = {b"EndDocument", b"EndData", b"EndBinary"}


def _count_postscript(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    """DSC: %%Pages (or its (atend) trailer value), cross-checked with %%Page: comments.

    Pages of embedded documents (%%BeginDocument ... %%EndDocument) do not
    count.  When both are present the larger of the two wins: a document
    claiming fewer pages than it marks is not believed.
    """
    f.seek(0)
    depth = 0
    header_pages: int | None = None
    trailer_pages: int | None = None
    in_trailer = False
    page_comments = 0
    carry = b""
    while True:
        data = f.read(_CHUNK)
        text = carry + data
        if data:
            cut = max(text.rfind(b"\n"), text.rfind(b"\r"))
            if cut < 0:
                carry = text[:4096]  # a very long line: only its start can matter
                continue
            carry = text[cut + 1 :]
            text = text[: cut + 1]
        else:
            carry = b""
        for m in _DSC_RE.finditer(text):
            start = m.start()
            if start and text[start - 1] not in b"\r\n":
                continue
            kw, colon, rest = m.group(1), m.group(2), m.group(3)
            if kw in _DSC_NESTING_OPEN:
                depth += 1
            elif kw in _DSC_NESTING_CLOSE:
                depth = max(0, depth - 1)
            elif depth:
                continue
            elif kw == b"Page":
                if colon:
                    page_comments += 1
            elif kw == b"Pages":
                if not colon:
                    continue
                value = rest.strip()
                n = re.match(rb"\d+", value)
                if n is None:
                    continue
                if in_trailer:
                    trailer_pages = int(n.group())
                elif header_pages is None:
                    header_pages = int(n.group())
            elif kw == b"Trailer":
                in_trailer = True
        if not data:
            break
    declared = trailer_pages if trailer_pages is not None else header_pages
    if declared is None:
        if not page_comments and _is_eps(head):
            return 1, None  # an EPS file is one page by definition
        return (page_comments or None), None
    return max(declared, page_comments), None


def _is_eps(head: bytes) -> bool:
    start = 0
    if head.startswith(b"\xc5\xd0\xd3\xc6") and len(head) >= 8:  # DOS EPS binary header
        start = struct.unpack_from("<I", head, 4)[0]
    else:
        start, _ = _strip_pjl(head)
    first_line = re.match(rb"[^\r\n]*", head[start : start + 256])
    return first_line is not None and b"EPSF" in first_line.group()


# --------------------------------------------------------------------------
# Raster formats (PWG / CUPS raster, Apple URF)
# --------------------------------------------------------------------------


class _Reader:
    """Buffered sequential reader (the raster loop works on its buffer directly)."""

    __slots__ = ("buf", "f", "pos")

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0

    def _fill(self) -> bool:
        rest = self.buf[self.pos :]
        more = self.f.read(_CHUNK)
        if not more:
            return False
        self.buf = rest + more
        self.pos = 0
        return True

    def read(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            if not self._fill():
                break
        out = self.buf[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def skip(self, n: int) -> bool:
        avail = len(self.buf) - self.pos
        if n <= avail:
            self.pos += n
            return True
        n -= avail
        self.buf = b""
        self.pos = 0
        here = self.f.tell()
        end = self.f.seek(0, os.SEEK_END)
        if here + n > end:
            return False
        self.f.seek(here + n)
        return True


def _skip_packed_lines(r: _Reader, lines: int, bytes_per_line: int, unit: int) -> bool:
    """Skip run-length packed raster lines (the CUPS v2 / PWG / URF scheme).

    Each line group is a repeat-count byte followed by runs until the line's
    bytes are covered: 0-127 repeat one pixel n+1 times, 129-255 copy 257-n
    literal pixels, 128 clears to the end of the line.  This is the hot loop
    for raster jobs, so it works on a local buffer with no calls per run.
    Returns False if the data ends first.
    """
    if bytes_per_line <= 0 or unit <= 0:
        return False
    margin = 2 + 128 * unit  # the most one step can consume
    buf, pos = r.buf, r.pos
    eof = False
    y = 0
    remaining = 0  # bytes of the current line not yet covered
    while True:
        n = len(buf)
        limit = n if eof else n - margin
        while pos < limit:
            if remaining <= 0:
                if y >= lines:
                    break
                y += buf[pos] + 1
                pos += 1
                remaining = bytes_per_line
                continue
            c = buf[pos]
            if c < 128:
                pos += 1 + unit
                remaining -= (c + 1) * unit
            elif c == 128:
                pos += 1
                remaining = 0
            else:
                k = (257 - c) * unit
                pos += 1 + k
                remaining -= k
        if remaining <= 0 and y >= lines:
            if pos > n:
                break  # the last run was cut short
            r.buf, r.pos = buf, pos
            return True
        if eof:
            break
        more = r.f.read(_CHUNK)
        if not more:
            eof = True
        buf = buf[pos:] + more
        pos = 0
    r.buf, r.pos = b"", 0
    return False


_CUPS_HEADER = 1796
_CUPS_MONO_SPACES = {0, 3, 12, 13, 14, 18, 32, 48}  # W, K, WHITE, GOLD, SILVER, SW, ICC1, Device1
_CUPS_COLOUR_SPACES = {1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17, 19, 20}


def _count_cups_raster(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    f.seek(0)
    sync = f.read(4)
    if sync in (b"RaS2", b"RaS3"):
        endian = ">"
    elif sync in (b"2SaR", b"3SaR"):
        endian = "<"
    else:
        return None, None
    compressed = sync in (b"RaS2", b"2SaR")
    r = _Reader(f)
    pages = 0
    colour = False
    while True:
        hdr = r.read(_CUPS_HEADER)
        if not hdr:
            break
        if len(hdr) < _CUPS_HEADER:
            if pages == 0:
                return None, None
            break
        width, height, _mt, bpc, bpp, bpl, order, cspace, _comp = struct.unpack_from(
            endian + "9I", hdr, 372
        )
        (num_colors,) = struct.unpack_from(endian + "I", hdr, 420)
        if not (0 < width <= 1 << 20 and 0 < height <= 1 << 22 and 0 < bpp <= 240):
            raise _Malformed("implausible raster page header")
        if bpl < (width * bpp + 7) // 8 and order == 0:
            raise _Malformed("bytes per line too small")
        pages += 1
        if cspace in _CUPS_COLOUR_SPACES or (cspace not in _CUPS_MONO_SPACES and num_colors > 1):
            colour = True
        lines = height * (num_colors if order == 2 and num_colors > 0 else 1)
        if compressed:
            unit = max(1, (bpc if order else bpp) // 8)
            if not _skip_packed_lines(r, lines, bpl, unit):
                break  # truncated last page: it still counts
        elif not r.skip(bpl * lines):
            break
    return pages, colour


_URF_COLOUR_SPACES = {1, 2, 3, 5, 6}  # sRGB, CIELab, AdobeRGB, RGB, CMYK (0/4 are grey)


def _count_urf(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    """Apple raster: page headers counted by walking the packed data.

    The file header's page count is not used: streaming writers (ghostscript
    among them) leave it 0, and a truncated job prints what it holds.
    """
    f.seek(0)
    if f.read(12)[:8] != b"UNIRAST\x00":
        return None, None
    r = _Reader(f)
    pages = 0
    colour = False
    while True:
        hdr = r.read(32)
        if len(hdr) < 32:
            break
        bpp, cspace = hdr[0], hdr[1]
        width, height = struct.unpack_from(">II", hdr, 12)
        plausible = 0 < width <= 1 << 20 and 0 < height <= 1 << 22
        if bpp not in (1, 8, 16, 24, 32, 48, 64) or not plausible:
            raise _Malformed("implausible URF page header")
        pages += 1
        colour = colour or cspace in _URF_COLOUR_SPACES
        if not _skip_packed_lines(r, height, (width * bpp + 7) // 8, max(1, bpp // 8)):
            break  # truncated last page: it still counts
    if pages == 0:
        return None, None
    return pages, colour


# --------------------------------------------------------------------------
# PCL XL (PCL 6)
# --------------------------------------------------------------------------

_PXL_ELEMENT_SIZE = (1, 2, 4, 2, 4, 4)  # ubyte, uint16, uint32, sint16, sint32, real32
_PXL_ELEMENT_FORMAT = "BHIhif"
_PXL_ELEMENT_FULL_SCALE = (255.0, 65535.0, 4294967295.0, 32767.0, 2147483647.0, 1.0)
_PXL_WHITESPACE = frozenset(b"\x00\x09\x0a\x0b\x0c\x0d\x20")
_PXL_BEGIN_PAGE = 0x43
_PXL_SET_COLOR_SPACE = 0x6A
_PXL_SET_SOURCES = (0x63, 0x79)  # SetBrushSource, SetPenSource
_PXL_BEGIN_RAST_PATTERN = 0xB3
_PXL_ATTR_COLOR_SPACE = 3
_PXL_ATTR_PALETTE_DATA = 6
_PXL_ATTR_RGB_COLOR = 11
_PXL_BEGIN_IMAGE, _PXL_READ_IMAGE, _PXL_END_IMAGE = 0xB0, 0xB1, 0xB2
_PXL_ATTR_COLOR_DEPTH = 0x62  # e1Bit, e4Bit, e8Bit
_PXL_ATTR_COLOR_MAPPING = 0x64  # eDirectPixel, eIndexedPixel
_PXL_ATTR_SOURCE_WIDTH = 0x6C
_PXL_ATTR_COMPRESS_MODE = 0x65  # eNoCompression, eRLECompression, eJPEG..., eDeltaRow...
_PXL_MAX_IMAGE_CHECK = 4 << 20  # image blocks larger than this are assumed colour
_PXL_MAX_IMAGE_DECODED = 32 << 20
_PXL_RGB_SPACES = {2, 6}  # eRGB, eSRGB (eGray = 1)
_PXL_NEUTRAL_TOLERANCE = 8 / 255  # drivers' RGB greys are rarely exactly neutral

class _PxlArray(NamedTuple):
    etype: int
    length: int
    raw: bytes
    prefix: str

    def values(self) -> tuple[float, ...]:
        """The elements, normalised to 0..1 (how colours and palettes are used)."""
        items = struct.unpack(f"{self.prefix}{self.length}{_PXL_ELEMENT_FORMAT[self.etype]}", self.raw)
        full = _PXL_ELEMENT_FULL_SCALE[self.etype]
        return tuple(float(x) / full for x in items)


_PxlValue: TypeAlias = "int | _PxlArray | None"


def _pxl_neutral(values: tuple[float, ...]) -> bool:
    """Whether every RGB triple in *values* (normalised to 0..1) is (nearly) grey."""
    for i in range(0, len(values) - 2, 3):
        r, g, b = values[i], values[i + 1], values[i + 2]
        if max(r, g, b) - min(r, g, b) > _PXL_NEUTRAL_TOLERANCE:
            return False
    return True


def _packbits(data: bytes, limit: int) -> bytes:
    """TIFF PackBits decoding, stopping once *limit* bytes are out."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n and len(out) < limit:
        c = data[i]
        if c < 128:
            out += data[i + 1 : i + 2 + c]
            i += 2 + c
        elif c > 128:
            out += data[i + 1 : i + 2] * (257 - c)
            i += 2
        else:
            i += 1
    return bytes(out)


def _pxl_image_is_colour(block: bytes, compression: int, width: int) -> bool:
    """Whether a block of 8-bit direct RGB image rows has a non-grey pixel.

    Uncompressed and RLE (PackBits) blocks are checked; JPEG and delta-row
    ones are assumed to be colour.  Rows are padded to 4 bytes.
    """
    if compression == 0:
        raw = block
    elif compression == 1:
        raw = _packbits(block, _PXL_MAX_IMAGE_DECODED)
        if len(raw) >= _PXL_MAX_IMAGE_DECODED:
            return True  # a decompression bomb is not worth looking at
    else:
        return True
    used = width * 3
    stride = (used + 3) & ~3
    tolerance = round(_PXL_NEUTRAL_TOLERANCE * 255)
    for start in range(0, len(raw), stride):
        row = raw[start : start + used]
        r, g, b = row[0::3], row[1::3], row[2::3]
        if r == g == b:
            continue  # the usual case for grey content: no per-pixel loop
        for x, y, z in zip(r, g, b, strict=False):
            if max(x, y, z) - min(x, y, z) > tolerance:
                return True
    return False


def _count_pclxl(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    """Count BeginPage operators by tokenising the PCL XL stream properly.

    Colour: a page is colour when, in an RGB colour space, it selects a
    non-grey RGBColor, or a palette with non-grey entries, or draws an RGB
    image with a non-grey pixel (uncompressed and RLE images are checked;
    JPEG and delta-row ones, other bit depths and raster patterns are assumed
    colour).  Greys sent as RGB (as ghostscript's pxlcolor does for CMYK
    black, and for grey images) do not count as colour.
    """
    m = _PCLXL_HEADER_RE.search(head)
    if m is None:
        return None, None
    nl = head.find(b"\n", m.end())
    if nl < 0:
        return None, None
    # Binding: '(' is high byte first, ')' low byte first (what ghostscript
    # and most Windows drivers write).
    big = head[m.start()] == 0x28
    prefix = ">" if big else "<"
    order: Literal["big", "little"] = "big" if big else "little"
    # The tokeniser is the hot loop for PCL XL, so it works on a local buffer:
    # buf holds the file from offset base on, pos is the next byte.
    base = nl + 1
    buf = b""
    pos = 0

    def ensure(need: int) -> bool:
        """Make buf hold *need* bytes from pos on, if the file has them."""
        nonlocal buf, base, pos
        if len(buf) - pos >= need:
            return True
        f.seek(base + len(buf))
        more = f.read(max(_CHUNK, need))
        buf = buf[pos:] + more
        base += pos
        pos = 0
        return len(buf) >= need

    def skip(k: int) -> bool:
        """Move pos k bytes on, past the buffer if need be."""
        nonlocal buf, base, pos
        if pos + k <= len(buf):
            pos += k
            return True
        target = base + pos + k
        if target > size:
            return False
        base, buf, pos = target, b"", 0
        return True

    pages = 0
    colour = False
    rgb_space = False
    palette: tuple[float, ...] | None = None
    value: _PxlValue = None
    attrs: dict[int, _PxlValue] = {}
    image_width = 0  # of the RGB image being drawn, when its pixels are checked
    image_block: int | None = None  # compression of the image data expected next
    whitespace = _PXL_WHITESPACE
    sizes = _PXL_ELEMENT_SIZE
    while True:
        if len(buf) - pos < 16:
            ensure(16)
            if pos >= len(buf):
                break  # end of data (a truncated job prints what it got)
        t = buf[pos]
        if t in whitespace:
            pos += 1
            continue
        if 0xC0 <= t <= 0xE5:
            kind, etype = t & 0xF8, t & 0x07
            if etype > 5 or kind not in (0xC0, 0xC8, 0xD0, 0xE0):
                raise _Malformed(f"bad PCL XL data type 0x{t:02x}")
            esize = sizes[etype]
            if kind == 0xC0 and etype < 3:  # the common case: an unsigned scalar
                if pos + 1 + esize > len(buf):
                    break
                value = int.from_bytes(buf[pos + 1 : pos + 1 + esize], order)
                pos += 1 + esize
                continue
            if kind != 0xC8:  # signed/real scalars, xy pairs, boxes: never needed
                k = 1 + {0xC0: 1, 0xD0: 2, 0xE0: 4}[kind] * esize
                if pos + k > len(buf):
                    break
                value = None
                pos += k
                continue
            ltag = buf[pos + 1] if pos + 1 < len(buf) else -1
            if ltag not in (0xC0, 0xC1, 0xC2):
                if ltag < 0:
                    break
                raise _Malformed("bad PCL XL array length")
            lsize = sizes[ltag & 0x07]
            if pos + 2 + lsize > len(buf):
                break
            count = int.from_bytes(buf[pos + 2 : pos + 2 + lsize], order)
            hdr = 2 + lsize
            nbytes = count * esize
            if nbytes > 4096:  # big arrays (e.g. image data) are never needed
                value = None
                if not skip(hdr + nbytes):
                    break
                continue
            if not ensure(hdr + nbytes):
                break
            # kept raw: most arrays are text, decoded only if used as a colour
            value = _PxlArray(etype, count, buf[pos + hdr : pos + hdr + nbytes], prefix)
            pos += hdr + nbytes
            continue
        if t == 0xF8:
            if pos + 2 > len(buf):
                break
            attrs[buf[pos + 1]] = value
            value = None
            pos += 2
            continue
        if t == 0xF9:
            if pos + 3 > len(buf):
                break
            attrs[int.from_bytes(buf[pos + 1 : pos + 3], order)] = value
            value = None
            pos += 3
            continue
        if t == 0xFA:
            if pos + 5 > len(buf):
                break
            k = int.from_bytes(buf[pos + 1 : pos + 5], order)
            if image_block is not None and not colour:
                if k > _PXL_MAX_IMAGE_CHECK or not ensure(5 + k):
                    colour = True
                else:
                    colour = _pxl_image_is_colour(buf[pos + 5 : pos + 5 + k], image_block, image_width)
            image_block = None
            if not skip(5 + k):
                break
            continue
        if t == 0xFB:
            if pos + 2 > len(buf) or not skip(2 + buf[pos + 1]):
                break
            continue
        if 0x41 <= t <= 0xBF:
            pos += 1
            if t == _PXL_BEGIN_PAGE:
                pages += 1
            elif t == _PXL_SET_COLOR_SPACE:
                rgb_space = attrs.get(_PXL_ATTR_COLOR_SPACE) in _PXL_RGB_SPACES
                pal = attrs.get(_PXL_ATTR_PALETTE_DATA)
                palette = pal.values() if isinstance(pal, _PxlArray) else None
                if rgb_space and palette is not None and not _pxl_neutral(palette):
                    colour = True
            elif rgb_space and t in _PXL_SET_SOURCES:
                rgb = attrs.get(_PXL_ATTR_RGB_COLOR)
                if isinstance(rgb, _PxlArray) and not _pxl_neutral(rgb.values()):
                    colour = True
            elif rgb_space and t == _PXL_BEGIN_IMAGE and palette is None:
                width = attrs.get(_PXL_ATTR_SOURCE_WIDTH)
                direct = attrs.get(_PXL_ATTR_COLOR_MAPPING) in (None, 0)
                if direct and attrs.get(_PXL_ATTR_COLOR_DEPTH) == 2 and isinstance(width, int):
                    image_width = width
                else:
                    colour = True
            elif t == _PXL_READ_IMAGE and image_width and not colour:
                mode = attrs.get(_PXL_ATTR_COMPRESS_MODE)
                image_block = mode if isinstance(mode, int) else 0
            elif t == _PXL_END_IMAGE:
                image_width = 0
            elif rgb_space and t == _PXL_BEGIN_RAST_PATTERN and palette is None:
                colour = True  # raster patterns: not checked
            if t != _PXL_READ_IMAGE:
                image_block = None
            if attrs:
                attrs.clear()
            value = None
            continue
        if t == 0x1B:  # UEL: the end of this PCL XL stream; another may follow
            ensure(_HEAD_BYTES)
            rest = buf[pos : pos + _HEAD_BYTES]
            if not rest.startswith(_UEL):
                if _UEL.startswith(rest):
                    break  # cut short inside the UEL
                raise _Malformed("ESC inside PCL XL")
            body, _language = _strip_pjl(rest)
            nxt = _PCLXL_HEADER_RE.match(rest, body)
            eol = rest.find(b"\n", body) if nxt else -1
            if nxt is None or eol < 0:
                break  # PJL end of job, or another language: done
            big = rest[body] == 0x28
            prefix = ">" if big else "<"
            order = "big" if big else "little"
            pos += eol + 1
            attrs.clear()
            value = None
            continue
        raise _Malformed(f"bad PCL XL tag 0x{t:02x}")
    return pages, colour


# --------------------------------------------------------------------------
# Single-image formats
# --------------------------------------------------------------------------


def _count_png(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    f.seek(8)
    colour_type: int | None = None
    for _ in range(10_000):
        hdr = f.read(8)
        if len(hdr) < 8:
            break
        length, ctype = struct.unpack(">I4s", hdr)
        if ctype == b"IHDR":
            data = f.read(13)
            if len(data) < 13:
                break
            colour_type = data[9]
            if colour_type != 3:
                return 1, colour_type in (2, 6)
            f.seek(length - 13 + 4, os.SEEK_CUR)
            continue
        if ctype == b"PLTE" and colour_type == 3:
            pal = f.read(min(length, 768))
            grey = all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
            return 1, not grey
        if ctype in (b"IDAT", b"IEND"):
            break
        f.seek(length + 4, os.SEEK_CUR)
    return (1, None) if colour_type is not None else (None, None)


def _count_jpeg(f: BinaryIO, size: int, head: bytes) -> tuple[int | None, bool | None]:
    f.seek(2)
    for _ in range(10_000):
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            break
        code = marker[1]
        if code == 0xFF:
            f.seek(-1, os.SEEK_CUR)
            continue
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
            continue
        raw = f.read(2)
        if len(raw) < 2:
            break
        (length,) = struct.unpack(">H", raw)
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
            sof = f.read(6)
            if len(sof) < 6:
                break
            return 1, sof[5] >= 3
        if code in (0xD9, 0xDA):
            break
        f.seek(length - 2, os.SEEK_CUR)
    return None, None


_COUNTERS: dict[str, _Counter] = {
    PDF: _count_pdf,
    POSTSCRIPT: _count_postscript,
    PWG_RASTER: _count_cups_raster,
    CUPS_RASTER: _count_cups_raster,
    URF: _count_urf,
    PCLXL: _count_pclxl,
    PNG: _count_png,
    JPEG: _count_jpeg,
}
