"""The site renews its sync certificate before it expires (docs/wire/enroll.md).

Every `[enroll] renew_check_interval` seconds (default an hour) the site looks at its
certificate; once less than `renew_fraction` (default 0.33) of its lifetime is left,
it asks the primary for a new one over mutual TLS (authenticated by the current
certificate), writes the new key and certificate, and gives the sync transport new
TLS options: the next connection uses them. Nothing restarts; a failed renewal is
logged and tried again at the next check while the current certificate still works.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, task

from appliance.config import SiteConfig
from appliance.config_enroll import EnrollConfig
from appliance.core.enrollment import Renewer, recover_pending
from appliance.pki import client_options

log = logging.getLogger(__name__)

__all__ = ["RenewalLoop", "recover_pending", "renewal_loop"]


class RenewalLoop:
    def __init__(self, renewer: Renewer, interval: float, reactor: Any) -> None:
        self.renewer = renewer
        self.interval = interval
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    def _tick(self) -> defer.Deferred[bool]:
        return defer.ensureDeferred(self.renewer.check())

    def start(self) -> None:
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.error("renewal loop stopped: %s", f.getTraceback()))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()


def renewal_loop(config: SiteConfig, reactor: Any, transport: Any) -> RenewalLoop:
    link = config.primary
    assert link is not None
    settings = config.enroll or EnrollConfig()
    hostname = urlsplit(link.url).hostname or ""

    def reload() -> None:
        transport.use(client_options(hostname, link.ca_file, link.cert_file, link.key_file))

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        result: tuple[int, bytes] = await transport.call("POST", path, body)
        return result

    renewer = Renewer(name=config.name, ca_file=link.ca_file, cert_file=link.cert_file,
                      key_file=link.key_file, post=post, reload=reload,
                      fraction=settings.renew_fraction, clock=reactor.seconds)
    return RenewalLoop(renewer, settings.renew_check_interval, reactor)
