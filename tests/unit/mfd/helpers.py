"""Shared by the MFD simulator's tests: an IPP client on the codec, and waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.codec import Attribute, Message, attr
from appliance.protocols.ipp.constants import GroupTag, Operation, ValueTag
from simulators.mfd.printer import SimulatedMfd

_request_ids = iter(range(1, 1 << 30))


def make_request(
    mfd: SimulatedMfd,
    operation: int,
    *,
    user: str | None = "alice",
    version: tuple[int, int] = (2, 0),
    extra: list[Attribute] | None = None,
    job: list[Attribute] | None = None,
    data: bytes = b"",
) -> Message:
    message = codec.request(
        operation, next(_request_ids), mfd.ipp_uri, version=version, user=user, extra=extra
    )
    if job:
        group = message.ensure_group(GroupTag.JOB)
        for attribute in job:
            group.add(attribute)
    message.data = data
    return message


async def send(uri: str, payload: Message | bytes, timeout: float = 10) -> Message:
    """POST one IPP request (a message, or raw bytes) and decode the answer."""
    body = codec.encode(payload) if isinstance(payload, Message) else payload
    response = await treq.post(
        uri.replace("ipp://", "http://", 1),
        data=body,
        headers={b"Content-Type": [b"application/ipp"]},
        persistent=False,
        timeout=timeout,
    )
    assert response.code == 200, response.code
    return codec.decode(await response.content())


async def call(mfd: SimulatedMfd, operation: int, **kwargs: Any) -> Message:
    return await send(mfd.ipp_uri, make_request(mfd, operation, **kwargs))


async def print_job(
    mfd: SimulatedMfd,
    data: bytes,
    *,
    name: str = "report.pdf",
    document_format: str = "application/pdf",
    job: list[Attribute] | None = None,
    user: str = "alice",
) -> Message:
    extra = [
        attr("job-name", ValueTag.NAME, name),
        attr("document-format", ValueTag.MIME_MEDIA_TYPE, document_format),
    ]
    return await call(mfd, Operation.PRINT_JOB, extra=extra, job=job, data=data, user=user)


def job_id_of(reply: Message) -> int:
    job_id = reply.get(GroupTag.JOB, "job-id")
    assert isinstance(job_id, int), reply
    return job_id


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01, lambda: None)


async def job_done(mfd: SimulatedMfd, job_id: int, timeout: float = 10.0) -> None:
    def done() -> bool:
        job = mfd.job(job_id)
        return job is not None and job.terminal

    await until(done, timeout)


def pdf_bytes(pages: int) -> bytes:
    """A small, valid PDF of `pages` blank pages (no ghostscript needed)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    for _ in range(pages):
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def output_files(mfd: SimulatedMfd) -> list[Path]:
    return sorted(p for p in mfd.output_dir.iterdir() if not p.name.startswith("."))
