"""What `[primary]` (a site) and `[provider]` parse alike: the three TLS files of a sync
link and its timings. Parsed with `config.parse`'s error collector (`r`)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    """What every sync link has, a site's `[primary]` and a provider's `[provider]`:
    the mutual-TLS files and the timings (heartbeats, hysteresis, batch sizes)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    heartbeat_interval: float = 5.0
    offline_after_misses: int = 3
    online_after_successes: int = 3
    push_batch_size: int = 500
    pull_batch_size: int = 1000
    request_timeout: float = 10.0
    #: Online, how often the outbox is checked between heartbeats (the sync lag bound).
    push_interval: float = 1.0

    def settings(self) -> dict[str, Any]:
        """These fields by name: what a link of another kind built from this one keeps."""
        return {f.name: getattr(self, f.name) for f in fields(LinkSettings)}


#: A sync link's timings, as `[primary]` and `[provider]` name them.
LINK_TIMINGS = tuple(f.name for f in fields(LinkSettings) if f.default is not MISSING)

MAX_BATCH_SIZE = 5000


def tls_files(r: Any, table: dict[str, Any], path: str,
              base_dir: Path | None) -> tuple[Path, Path, Path]:
    """`ca_file`, `cert_file` and `key_file` of `table` (required), relative to base_dir."""
    files = []
    for key in ("ca_file", "cert_file", "key_file"):
        value = Path(r.get(table, path, key, str, "", required=True))
        files.append(base_dir / value if base_dir is not None else value)
    return files[0], files[1], files[2]


def link_timings(r: Any, table: dict[str, Any], path: str) -> dict[str, Any]:
    """The LINK_TIMINGS of `table`, each positive and of the type of its default (in
    LinkSettings); the batch sizes at most MAX_BATCH_SIZE."""
    defaults = {f.name: f.default for f in fields(LinkSettings)}
    values: dict[str, Any] = {}
    for name in LINK_TIMINGS:
        default = defaults[name]
        value = r.get(table, path, name, type(default), default)
        r.positive(value, f"{path}.{name}")
        values[name] = value
    for name in ("push_batch_size", "pull_batch_size"):
        if isinstance(values[name], int) and values[name] > MAX_BATCH_SIZE:
            r.errors.append(f"{path}.{name}: at most {MAX_BATCH_SIZE}")
    return values
