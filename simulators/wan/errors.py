"""Errors with the HTTP status and message toxiproxy gives for the same mistake.

The simulator raises these from its Python API too, so the lab sees the same
words in a traceback as a toxiproxy client sees in a response.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}

    def joined(self, detail: str) -> ApiError:
        """toxiproxy's joinError: "bad request body: <detail>"."""
        return ApiError(f"{self.message}: {detail}", self.status)


BAD_REQUEST_BODY = ApiError("bad request body", 400)
MISSING_FIELD = ApiError("missing required field", 400)
PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_ALREADY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ApiError("invalid toxic type", 400)
TOXIC_ALREADY_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)
# Extensions (docs/wire/wan-api.md).
SCHEDULE_NOT_FOUND = ApiError("schedule not found", 404)
NOT_FOUND = ApiError("not found", 404)
METHOD_NOT_ALLOWED = ApiError("method not allowed", 405)


def listen_error(address: str, detail: str) -> ApiError:
    """A listen address in use or not bindable.

    toxiproxy answers 500 with Go's net error text; we keep the text and
    answer 409 Conflict, because the caller can fix it (docs/wire/wan-api.md).
    """
    return ApiError(f"listen tcp {address}: bind: {detail}", 409)
