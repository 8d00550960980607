#!/usr/bin/env python3
"""Capture real IPP requests from CUPS clients (ipptool, lp) as codec fixtures.

A tiny loopback HTTP server answers every IPP POST with a minimal successful
response (version and request-id echoed; printer attributes for
Get-Printer-Attributes; job-id/job-uri/job-state for job operations) and saves
every request body, byte for byte, to a file.

It uses only the standard library and deliberately does *not* import
`appliance.protocols.ipp.codec`: the fixtures exist to test that codec, so the
tool that makes them must not depend on it.

Two ways to run it:

    # just the server; point any client at the printed URI
    python scripts/capture_ipp.py serve --out /tmp/ipp-capture [--port 8631]

    # the whole capture used for tests/fixtures/ipp (needs ipptool, lp, gs)
    python scripts/capture_ipp.py capture --out tests/fixtures/ipp
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: Fixtures stay below this size; document data beyond it is cut off.
MAX_FIXTURE_SIZE = 64 * 1024

OPERATION_NAMES = {
    0x0002: "print-job",
    0x0004: "validate-job",
    0x0005: "create-job",
    0x0006: "send-document",
    0x0008: "cancel-job",
    0x0009: "get-job-attributes",
    0x000A: "get-jobs",
    0x000B: "get-printer-attributes",
    0x003B: "close-job",
    0x4001: "cups-get-default",
    0x4002: "cups-get-printers",
}

# ---------------------------------------------------------------- a tiny encoder

OPERATION, JOB, END, PRINTER = 0x01, 0x02, 0x03, 0x04
INTEGER, BOOLEAN, ENUM = 0x21, 0x22, 0x23
RANGE_OF_INTEGER = 0x33
BEG_COLLECTION, END_COLLECTION, MEMBER_ATTR_NAME = 0x34, 0x37, 0x4A
TEXT, NAME, KEYWORD, URI, CHARSET, LANGUAGE, MIME = 0x41, 0x42, 0x44, 0x45, 0x47, 0x48, 0x49


def _value(tag: int, value: Any) -> bytes:
    if tag in (INTEGER, ENUM):
        return struct.pack(">i", value)
    if tag == BOOLEAN:
        return b"\x01" if value else b"\x00"
    if tag == RANGE_OF_INTEGER:
        return struct.pack(">ii", *value)
    return str(value).encode("utf-8")


def _attribute(tag: int, name: str, values: Iterable[Any]) -> bytes:
    out = bytearray()
    for i, value in enumerate(values):
        name_bytes = name.encode() if i == 0 else b""
        out += struct.pack(">BH", tag, len(name_bytes)) + name_bytes
        if tag == BEG_COLLECTION:
            out += b"\x00\x00"
            for member, (member_tag, member_values) in value.items():
                out += struct.pack(">BHH", MEMBER_ATTR_NAME, 0, len(member)) + member.encode()
                out += _attribute(member_tag, "", member_values)
            out += struct.pack(">BHH", END_COLLECTION, 0, 0)
        else:
            raw = _value(tag, value)
            out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


def _response(version: bytes, request_id: bytes, groups: list[tuple[int, list[tuple]]]) -> bytes:
    out = bytearray(version + b"\x00\x00" + request_id)  # status successful-ok
    for group_tag, attributes in groups:
        out.append(group_tag)
        for tag, name, values in attributes:
            out += _attribute(tag, name, values)
    out.append(END)
    return bytes(out)


def _operation_group() -> tuple[int, list[tuple]]:
    return (
        OPERATION,
        [
            (CHARSET, "attributes-charset", ["utf-8"]),
            (LANGUAGE, "attributes-natural-language", ["en"]),
        ],
    )


def _printer_group(base: str) -> tuple[int, list[tuple]]:
    uri = f"{base}/printers/test"
    a4 = {"x-dimension": (INTEGER, [21000]), "y-dimension": (INTEGER, [29700])}
    return (
        PRINTER,
        [
            (CHARSET, "charset-configured", ["utf-8"]),
            (CHARSET, "charset-supported", ["utf-8"]),
            (KEYWORD, "compression-supported", ["none"]),
            (MIME, "document-format-default", ["application/octet-stream"]),
            (MIME, "document-format-supported", ["application/pdf", "application/octet-stream"]),
            (LANGUAGE, "generated-natural-language-supported", ["en"]),
            (KEYWORD, "ipp-versions-supported", ["1.0", "1.1", "2.0"]),
            (BEG_COLLECTION, "media-col-default", [{"media-size": (BEG_COLLECTION, [a4])}]),
            (KEYWORD, "media-default", ["iso_a4_210x297mm"]),
            (LANGUAGE, "natural-language-configured", ["en"]),
            (ENUM, "operations-supported", [0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0B]),
            (TEXT, "printer-info", ["Outpost capture printer"]),
            (BOOLEAN, "printer-is-accepting-jobs", [True]),
            (TEXT, "printer-location", ["loopback"]),
            (TEXT, "printer-make-and-model", ["Outpost Capture"]),
            (URI, "printer-more-info", [f"{base.replace('ipp:', 'http:')}/printers/test"]),
            (NAME, "printer-name", ["test"]),
            (ENUM, "printer-state", [3]),
            (KEYWORD, "printer-state-reasons", ["none"]),
            (INTEGER, "printer-up-time", [1000]),
            (URI, "printer-uri-supported", [uri]),
            (KEYWORD, "sides-supported", ["one-sided", "two-sided-long-edge"]),
            (RANGE_OF_INTEGER, "copies-supported", [(1, 99)]),
            (KEYWORD, "uri-authentication-supported", ["none"]),
            (KEYWORD, "uri-security-supported", ["none"]),
            (BOOLEAN, "multiple-document-jobs-supported", [False]),
            (ENUM, "printer-type", [0x0000_1004]),  # CUPS: local printer, duplex
        ],
    )


class CaptureHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # CUPS clients keep the connection open
    server: CaptureServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_POST(self) -> None:
        body = self._body()
        if len(body) < 8:
            self.send_error(400, "not an IPP message")
            return
        self.server.save(body)
        version, operation, request_id = body[0:2], struct.unpack(">H", body[2:4])[0], body[4:8]
        host = self.headers.get("Host", f"127.0.0.1:{self.server.server_address[1]}")
        base = f"ipp://{host}"
        groups = [_operation_group()]
        if operation in (0x000B, 0x4001, 0x4002):
            groups.append(_printer_group(base))
        elif operation in (0x0002, 0x0005, 0x0006, 0x0009, 0x003B):
            groups.append(
                (
                    JOB,
                    [
                        (URI, "job-uri", [f"{base}/jobs/{self.server.job_id}"]),
                        (INTEGER, "job-id", [self.server.job_id]),
                        (ENUM, "job-state", [3]),
                        (KEYWORD, "job-state-reasons", ["none"]),
                    ],
                )
            )
        payload = _response(version, request_id, groups)
        self.send_response(200)
        self.send_header("Content-Type", "application/ipp")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.send_error(404)


class CaptureServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, out: Path, verbose: bool = False) -> None:
        super().__init__(("127.0.0.1", port), CaptureHandler)
        self.out = out
        self.verbose = verbose
        self.prefix = "capture"
        self.job_id = 1
        self.saved: list[Path] = []
        self._lock = threading.Lock()

    def save(self, body: bytes) -> None:
        operation = struct.unpack(">H", body[2:4])[0]
        name = OPERATION_NAMES.get(operation, f"op-{operation:04x}")
        with self._lock:
            path = self.out / f"{self.prefix}-{len(self.saved) + 1:02d}-{name}.bin"
            path.write_bytes(body)
            self.saved.append(path)


# ---------------------------------------------------------------- capture run


def attributes_end(body: bytes) -> int:
    """Offset just after end-of-attributes-tag (a framing scan, no decoding)."""
    pos = 8
    while True:
        tag = body[pos]
        pos += 1
        if tag == END:
            return pos
        if tag < 0x10:
            continue
        if tag == 0x7F:
            pos += 4
        (name_length,) = struct.unpack_from(">H", body, pos)
        pos += 2 + name_length
        (value_length,) = struct.unpack_from(">H", body, pos)
        pos += 2 + value_length


def truncate(path: Path, limit: int = MAX_FIXTURE_SIZE) -> bool:
    body = path.read_bytes()
    if len(body) <= limit:
        return False
    keep = max(attributes_end(body), limit)
    path.write_bytes(body[:keep])
    return True


def make_pdf(directory: Path) -> Path:
    pdf = directory / "hello.pdf"
    subprocess.run(
        [
            "gs", "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sDEVICE=pdfwrite",
            "-dCompressPages=false", "-sPAPERSIZE=a4", f"-sOutputFile={pdf}",
            "-c", "/Helvetica findfont 24 scalefont setfont 72 720 moveto "
            "(Outpost IPP fixture) show showpage",
        ],
        check=True,
    )  # fmt: skip
    return pdf


def capture(out: Path, verbose: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.bin"):
        old.unlink()
    server = CaptureServer(0, out, verbose)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"ipp://127.0.0.1:{port}/printers/test"
    tests = Path("/usr/share/cups/ipptool")
    env = dict(os.environ, LC_ALL="C", LANG="C", CUPS_SERVER=f"127.0.0.1:{port}")
    env["CUPS_USER"] = "alice"  # ipptool's $user; lp gets -U alice as well
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            pdf = make_pdf(work)
            runs: list[tuple[str, list[str]]] = [
                (
                    "ipptool-gpa",
                    ["ipptool", "-tv", uri, str(tests / "get-printer-attributes.test")],
                ),
                (
                    "ipptool-print",
                    ["ipptool", "-tv", "-f", str(pdf), uri, str(tests / "print-job.test")],
                ),
                (
                    "ipptool-media-col",
                    ["ipptool", "-tv", "-f", str(pdf), uri,
                     str(tests / "print-job-media-col.test")],
                ),
                (
                    "lp",
                    ["lp", "-h", f"127.0.0.1:{port}", "-d", "test", "-U", "alice", "-n", "2",
                     "-o", "sides=two-sided-long-edge", str(pdf)],
                ),
            ]  # fmt: skip
            for prefix, argv in runs:
                server.prefix = prefix
                server.saved.clear()
                result = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=60)
                if verbose or result.returncode != 0:
                    print(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}", file=sys.stderr)
                if result.returncode != 0:
                    raise SystemExit(f"{argv[0]} failed with exit status {result.returncode}")
    finally:
        server.shutdown()
        server.server_close()
    saved = sorted(out.glob("*.bin"))
    for path in saved:
        if truncate(path):
            print(f"truncated document data in {path.name}", file=sys.stderr)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the capture server until interrupted")
    serve_parser.add_argument("--port", type=int, default=0)
    serve_parser.add_argument("--out", type=Path, required=True)
    serve_parser.add_argument("-v", "--verbose", action="store_true")
    capture_parser = sub.add_parser("capture", help="capture the fixture set with ipptool and lp")
    capture_parser.add_argument("--out", type=Path, default=Path("tests/fixtures/ipp"))
    capture_parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "serve":
        args.out.mkdir(parents=True, exist_ok=True)
        server = CaptureServer(args.port, args.out, args.verbose)
        print(f"ipp://127.0.0.1:{server.server_address[1]}/printers/test", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    for missing in [tool for tool in ("ipptool", "lp", "gs") if shutil.which(tool) is None]:
        raise SystemExit(
            f"{missing} is not installed (apt-get install cups-ipp-utils cups-client ghostscript)"
        )
    for path in capture(args.out, args.verbose):
        print(f"{path}  {path.stat().st_size} octets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
