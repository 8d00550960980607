"""A workstation: prints over IPP exactly as a desktop would (blocking, one request at a time),
and makes sample documents with ghostscript."""

from __future__ import annotations

import http.client
import itertools
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.constants import GroupTag, Operation, ValueTag

_request_ids = itertools.count(1)


class PrintRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"IPP status 0x{status:04x}: {message}")
        self.status = status


def print_file(
    queue_uri: str, user: str, path: Path, *, copies: int = 1, sides: str = "one-sided",
    colour_mode: str | None = None, number_up: int = 1, job_name: str | None = None,
    document_format: str = "application/octet-stream", timeout: float = 60.0,
) -> int:
    """Print-Job; returns the job-id the server acknowledged."""
    message = codec.request(
        Operation.PRINT_JOB, next(_request_ids), queue_uri, user=user,
        extra=[codec.attr("job-name", ValueTag.NAME, job_name or path.name),
               codec.attr("document-format", ValueTag.MIME_MEDIA_TYPE, document_format)],
    )
    job = message.ensure_group(GroupTag.JOB)
    job.add(codec.attr("copies", ValueTag.INTEGER, copies))
    job.add(codec.attr("sides", ValueTag.KEYWORD, sides))
    if number_up != 1:
        job.add(codec.attr("number-up", ValueTag.INTEGER, number_up))
    if colour_mode:
        job.add(codec.attr("print-color-mode", ValueTag.KEYWORD, colour_mode))
    message.data = path.read_bytes()
    answer = send(queue_uri, message, timeout)
    if answer.code >= 0x0400:
        raise PrintRefused(answer.code, str(answer.get(GroupTag.OPERATION, "status-message")))
    job_id = answer.get(GroupTag.JOB, "job-id")
    assert isinstance(job_id, int)
    return job_id


def send(uri: str, message: codec.Message, timeout: float = 60.0) -> codec.Message:
    parts = urlsplit(uri)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 631,
                                      timeout=timeout)
    try:
        conn.request("POST", parts.path, body=codec.encode(message),
                     headers={"Content-Type": "application/ipp"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return codec.decode(body)


def make_pdf(path: Path, pages: int, colour_pages: frozenset[int] = frozenset()) -> Path:
    """A PDF of `pages` A4 pages; pages whose number is in `colour_pages` carry red ink."""
    program = ["%!PS", "/Helvetica findfont 36 scalefont setfont"]
    for page in range(1, pages + 1):
        program.append("<< /PageSize [595 842] >> setpagedevice")
        if page in colour_pages:
            program.append("1 0 0 setrgbcolor 72 500 300 200 rectfill 0 setgray")
        program.append(f"72 720 moveto ({path.stem} page {page}) show showpage")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite",
         f"-sOutputFile={path}", "-"],
        input="\n".join(program).encode(), check=True, capture_output=True,
    )
    return path
