"""`[provider]`: a provider's ordered upstreams and how it talks to them (docs/providers.md).

Parsed by `config.parse` with its error collector (`r`), so that its mistakes are
reported with every other one, each with its path. A site with a `[provider]` table and
no `[primary]` is a promoted provider: its first upstream becomes its primary (the
change of role is the whole promotion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config_link import LINK_TIMINGS, LinkSettings, link_timings, tls_files


@dataclass(frozen=True, kw_only=True)
class ProviderLinkConfig(LinkSettings):
    """`[provider]`: upstream sync URLs in order of preference (the primary's first, then
    the site server's), the provider's certificate, and the link's timings."""

    upstreams: tuple[str, ...]


def parse_provider(r: Any, root: dict[str, Any], role: str,
                   base_dir: Path | None) -> ProviderLinkConfig | None:
    """The `[provider]` table (None when absent); errors go to `r.errors`."""
    if role == "site" and "sync" in root and "primary" not in root:
        r.errors.append("sync: a site serves providers only with a [primary] to forward "
                        "their events to")
    if "provider" not in root:
        if role == "provider":
            r.errors.append("provider: required for role 'provider' (upstreams, ca_file, "
                            "cert_file, key_file)")
        return None
    table = r.table(root, "", "provider")
    if role == "site" and "primary" in root:
        r.errors.append("provider: a promoted provider (role 'site') reports to its first "
                        "upstream; give either [provider] or [primary], not both")
    elif role not in ("provider", "site"):
        r.errors.append(f"provider: only a provider has upstreams (this is role {role!r})")
    r.unknown(table, "provider", {"upstreams", "ca_file", "cert_file", "key_file",
                                  *LINK_TIMINGS})
    raw = r.get(table, "provider", "upstreams", list, [], required=True)
    upstreams: list[str] = []
    for i, url in enumerate(raw):
        where = f"provider.upstreams[{i}]"
        if not isinstance(url, str) or not url.startswith("https://") \
                or len(url) <= len("https://"):
            r.errors.append(f"{where}: expected https://host:port")
            continue
        if url.rstrip("/") in upstreams:
            r.errors.append(f"{where}: {url!r} is listed twice")
            continue
        upstreams.append(url.rstrip("/"))
    if "upstreams" in table and isinstance(raw, list) and not raw:
        r.errors.append("provider.upstreams: at least one (the primary's sync URL)")
    ca, cert, key = tls_files(r, table, "provider", base_dir)
    values = link_timings(r, table, "provider")
    return ProviderLinkConfig(upstreams=tuple(upstreams), ca_file=ca, cert_file=cert,
                              key_file=key, **values)
