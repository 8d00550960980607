"""Optional mode: a site and its primary in two network namespaces.

Where root and `ip netns` are available, `NamespacePair` creates two
namespaces joined by a veth pair on a /30, so a site server and a primary
run on separate network stacks. The hard-cut faults are the kernel's own:
`cut("link")` sets the veth down (sockets see nothing; established
connections stall until TCP gives up), `cut("blackhole")` adds blackhole
routes for the peer's address on both sides (sends fail with EINVAL, as a
router with no route would make them). Latency and loss still come from the
proxy toxics: this kernel has no `tc netem`; run a WanSimulator proxy in
one of the namespaces (`pair.exec_argv("site", [...])`) to combine both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from collections.abc import Sequence


class NetnsError(RuntimeError):
    pass


def available() -> bool:
    """Root and a working `ip netns`."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    return result.returncode == 0


class NamespacePair:
    def __init__(self, site: str = "outpost-site", primary: str = "outpost-primary",
                 prefix: str = "10.213.0") -> None:
        self.site = site
        self.primary = primary
        self.site_ip = f"{prefix}.1"
        self.primary_ip = f"{prefix}.2"
        # Interface names are limited to 15 characters; the same in every process.
        tag = zlib.crc32(f"{site}/{primary}".encode()) % 10**8
        self.site_if = f"v{tag}s"
        self.primary_if = f"v{tag}p"
        self.cut_mode: str | None = None

    def _ip(self, *args: str, namespace: str | None = None, check: bool = True) -> str:
        argv = ["ip", *(["-n", namespace] if namespace else []), *args]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip()}")
        return result.stdout

    def create(self) -> None:
        if not available():
            raise NetnsError("needs root and `ip netns`")
        self.destroy()
        self._ip("netns", "add", self.site)
        self._ip("netns", "add", self.primary)
        self._ip("link", "add", self.site_if, "netns", self.site, "type", "veth",
                 "peer", "name", self.primary_if, "netns", self.primary)
        for ns, ifname, addr in ((self.site, self.site_if, self.site_ip),
                                 (self.primary, self.primary_if, self.primary_ip)):
            self._ip("addr", "add", f"{addr}/30", "dev", ifname, namespace=ns)
            self._ip("link", "set", ifname, "up", namespace=ns)
            self._ip("link", "set", "lo", "up", namespace=ns)

    def cut(self, how: str = "link") -> None:
        """Hard cut: "link" (veth down) or "blackhole" (routes to nowhere)."""
        if how == "link":
            self._ip("link", "set", self.site_if, "down", namespace=self.site)
            self._ip("link", "set", self.primary_if, "down", namespace=self.primary)
        elif how == "blackhole":
            self._ip("route", "add", "blackhole", f"{self.primary_ip}/32", namespace=self.site)
            self._ip("route", "add", "blackhole", f"{self.site_ip}/32", namespace=self.primary)
        else:
            raise NetnsError(f"unknown cut {how!r} (link or blackhole)")
        self.cut_mode = how

    def heal(self) -> None:
        self._ip("route", "del", "blackhole", f"{self.primary_ip}/32", namespace=self.site,
                 check=False)
        self._ip("route", "del", "blackhole", f"{self.site_ip}/32", namespace=self.primary,
                 check=False)
        for ns, ifname in ((self.site, self.site_if), (self.primary, self.primary_if)):
            self._ip("link", "set", ifname, "up", namespace=ns, check=False)
        self.cut_mode = None

    def destroy(self) -> None:
        for ns in (self.site, self.primary):
            self._ip("netns", "del", ns, check=False)

    def exec_argv(self, which: str, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` inside the "site" or "primary" namespace."""
        namespace = self.site if which == "site" else self.primary
        return ["ip", "netns", "exec", namespace, *argv]
