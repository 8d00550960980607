"""The MFD simulator's control API: HTTP JSON on its own port.

- ``GET /control``: the MFD's state: name, fault, counters, printer state
  and jobs (see `SimulatedMfd.status`).
- ``POST /control/fault`` with ``{"mode": "none"|"offline"|"jam"|"slow"|"reject",
  "after_pages": K, "page_delay": S, "once": bool}``: 200 with the new state,
  400 ``{"error": "..."}`` on bad input.
- ``GET /control/sensors``, ``POST /control/sensors`` with ``{"door_open": bool,
  "supplies": {"cyan": 5, ...}}`` (percent): what only the SNMP agent shows
  (`snmp.py`); 404 when the MFD serves no SNMP.

It stays up while the IPP port is "offline", so that a test can bring the
printer back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from .faults import FaultError, fault_from_json

if TYPE_CHECKING:
    from .printer import SimulatedMfd

MAX_BODY = 64 * 1024


def _json(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8") + b"\n"


class ControlResource(resource.Resource):
    isLeaf = True

    def __init__(self, mfd: SimulatedMfd) -> None:
        super().__init__()
        self._mfd = mfd

    def render(self, request: Request) -> bytes | int:
        path = [part for part in request.postpath or [] if part]
        if path == [b"control"]:
            if request.method in (b"GET", b"HEAD"):
                return _json(request, 200, self._mfd.status())
            return _json(request, 405, {"error": "use GET /control"})
        if path == [b"control", b"fault"]:
            if request.method == b"POST":
                return self._post_fault(request)
            if request.method == b"GET":
                return _json(request, 200, self._mfd.fault.to_json())
            return _json(request, 405, {"error": "use POST /control/fault"})
        if path == [b"control", b"sensors"]:
            return self._sensors(request)
        return _json(request, 404, {"error": "no such path; try GET /control"})

    def _sensors(self, request: Request) -> bytes:
        agent = self._mfd.snmp_agent
        if agent is None:
            return _json(request, 404, {"error": "this MFD serves no SNMP"})
        if request.method == b"GET":
            return _json(request, 200, agent.sensors_json())
        if request.method != b"POST":
            return _json(request, 405, {"error": "use GET or POST /control/sensors"})
        assert request.content is not None
        try:
            body = json.loads(request.content.read(MAX_BODY).decode("utf-8"))
            return _json(request, 200, agent.apply_sensors(body))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _json(request, 400, {"error": "the body is not JSON"})
        except ValueError as exc:
            return _json(request, 400, {"error": str(exc)})

    def _post_fault(self, request: Request) -> bytes | int:
        assert request.content is not None
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return _json(request, 413, {"error": "body too large"})
        try:
            fault = fault_from_json(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _json(request, 400, {"error": "the body is not JSON"})
        except FaultError as exc:
            return _json(request, 400, {"error": str(exc)})

        def answer(state: dict[str, Any]) -> None:
            if not request.finished and not request._disconnected:
                request.write(_json(request, 200, state))
                request.finish()

        def failed(failure: Failure) -> None:
            if not request.finished and not request._disconnected:
                request.write(_json(request, 500, {"error": failure.getErrorMessage()}))
                request.finish()

        self._mfd.apply_fault(fault).addCallbacks(answer, failed)
        return server.NOT_DONE_YET
