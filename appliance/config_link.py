"""What `[primary]` (a site) and `[provider]` parse alike: the three TLS files of a sync
link and its timings. Parsed with `config.parse`'s error collector (`r`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: A sync link's timings, as `[primary]` and `[provider]` name them.
LINK_TIMINGS = ("heartbeat_interval", "offline_after_misses", "online_after_successes",
                "push_batch_size", "pull_batch_size", "request_timeout", "push_interval")

MAX_BATCH_SIZE = 5000


def tls_files(r: Any, table: dict[str, Any], path: str,
              base_dir: Path | None) -> tuple[Path, Path, Path]:
    """`ca_file`, `cert_file` and `key_file` of `table` (required), relative to base_dir."""
    files = []
    for key in ("ca_file", "cert_file", "key_file"):
        value = Path(r.get(table, path, key, str, "", required=True))
        files.append(base_dir / value if base_dir is not None else value)
    return files[0], files[1], files[2]


def link_timings(r: Any, table: dict[str, Any], path: str, defaults: Any) -> dict[str, Any]:
    """The LINK_TIMINGS of `table`, each positive and of the type of its default (an
    attribute of `defaults`); the batch sizes at most MAX_BATCH_SIZE."""
    values: dict[str, Any] = {}
    for name in LINK_TIMINGS:
        default = getattr(defaults, name)
        value = r.get(table, path, name, type(default), default)
        r.positive(value, f"{path}.{name}")
        values[name] = value
    for name in ("push_batch_size", "pull_batch_size"):
        if isinstance(values[name], int) and values[name] > MAX_BATCH_SIZE:
            r.errors.append(f"{path}.{name}: at most {MAX_BATCH_SIZE}")
    return values
