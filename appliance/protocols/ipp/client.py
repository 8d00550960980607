"""IPP client: the site's side of sending a released job to an MFD.

Uses the same sans-io codec as the server. The document is streamed from the
spool file (never read whole into memory) behind the encoded attributes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from . import codec
from .constants import IPP_MIME_TYPE


class IppClientError(Exception):
    """The device could not be reached or did not answer IPP."""


def http_url(ipp_uri: str) -> str:
    """ipp://host:port/path → http://host:port/path (ipps → https); default port 631."""
    parts = urlsplit(ipp_uri)
    scheme = {"ipp": "http", "ipps": "https"}.get(parts.scheme, parts.scheme)
    netloc = parts.netloc if parts.port or parts.scheme not in ("ipp", "ipps") else (
        f"{parts.hostname}:631"
    )
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


class _HeadThenFile(io.RawIOBase):
    """A readable, seekable view of `head` followed by a file's bytes."""

    def __init__(self, head: bytes, path: Path | None) -> None:
        self._head = head
        self._file = open(path, "rb") if path is not None else None
        self._file_size = os.fstat(self._file.fileno()).st_size if self._file else 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        size = len(self._head) + self._file_size
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = size + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        out = b""
        if self._pos < len(self._head):
            out = self._head[self._pos : self._pos + (n if n >= 0 else len(self._head))]
            self._pos += len(out)
            if n >= 0:
                n -= len(out)
        if self._file is not None and n != 0:
            self._file.seek(self._pos - len(self._head))
            chunk = self._file.read(n if n >= 0 else -1)
            self._pos += len(chunk)
            out += chunk
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


class IppClient:
    """Sends IPP requests over HTTP/1.1 with a connection pool."""

    def __init__(self, reactor: Any, *, connect_timeout: float = 5.0) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        self._agent = Agent(reactor, connectTimeout=connect_timeout, pool=pool)
        self._pool = pool
        self._request_id = 0

    def next_request_id(self) -> int:
        self._request_id = (self._request_id % 0x7FFFFFFF) + 1
        return self._request_id

    async def send(
        self, uri: str, message: codec.Message, document: Path | None = None
    ) -> codec.Message:
        """Send `message` (with `document` streamed after it) and decode the answer."""
        body = _HeadThenFile(codec.encode(message), document)
        producer = FileBodyProducer(body)
        try:
            response = await self._agent.request(
                b"POST", http_url(uri).encode(),
                Headers({b"Content-Type": [IPP_MIME_TYPE.encode()]}), producer,
            )
            payload = await readBody(response)
        except defer.CancelledError:
            raise
        except Exception as exc:
            raise IppClientError(f"{uri}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            body.close()
        if response.code != 200:
            raise IppClientError(f"{uri}: HTTP {response.code}")
        try:
            return codec.decode(payload)
        except codec.ParseError as exc:
            raise IppClientError(f"{uri}: bad IPP answer: {exc}") from exc

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
