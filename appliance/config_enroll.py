"""`[enroll]`: enrollment by join token and certificate rotation (docs/wire/enroll.md).

At the primary it makes the primary the deployment's certificate authority:

    [enroll]
    ca_key_file = "/var/lib/outpost-secrets/ca.key"   # mode 0600; ca.crt is [sync] ca_file
    port = 8634                 # server-auth TLS only: where new sites enroll
    approval = false            # true: `outpost site approve NAME` before a certificate
    cert_lifetime = 7776000     # seconds (90 days) a site certificate is valid

At a site it says when to renew (over mutual TLS, with the current certificate):

    [enroll]
    renew_fraction = 0.33       # renew once less than this fraction of the lifetime is left
    renew_check_interval = 3600 # seconds between checks
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ENROLL_PORT = 8634


@dataclass(frozen=True)
class EnrollConfig:
    # primary
    ca_key_file: Path | None = None
    host: str | None = None            # None: the [sync] host
    port: int = DEFAULT_ENROLL_PORT
    approval: bool = False
    cert_lifetime: float = 90 * 86400.0
    # site
    renew_fraction: float = 0.33
    renew_check_interval: float = 3600.0


PRIMARY_KEYS = {"ca_key_file", "host", "port", "approval", "cert_lifetime"}
SITE_KEYS = {"renew_fraction", "renew_check_interval"}


def parse_enroll(r: Any, root: dict[str, Any], role: str,
                 base_dir: Path | None) -> EnrollConfig | None:
    """The `[enroll]` table (None when absent); errors go to the reader `r`."""
    if "enroll" not in root:
        return None
    table = r.table(root, "", "enroll")
    known = PRIMARY_KEYS if role == "primary" else SITE_KEYS
    r.unknown(table, "enroll", known)
    default = EnrollConfig()
    ca_key: Path | None = None
    if role == "primary":
        raw = r.get(table, "enroll", "ca_key_file", str, "", required=True)
        ca_key = Path(raw) if raw else None
        if ca_key is not None and base_dir is not None:
            ca_key = base_dir / ca_key
    host = r.get(table, "enroll", "host", str, None)
    port = r.get(table, "enroll", "port", int, default.port)
    if isinstance(port, int) and not 0 <= port <= 65535:
        r.errors.append("enroll.port: must be 0..65535")
    approval = r.get(table, "enroll", "approval", bool, default.approval)
    lifetime = r.get(table, "enroll", "cert_lifetime", float, default.cert_lifetime)
    r.positive(lifetime, "enroll.cert_lifetime")
    fraction = r.get(table, "enroll", "renew_fraction", float, default.renew_fraction)
    if isinstance(fraction, float) and not 0.0 < fraction < 1.0:
        r.errors.append("enroll.renew_fraction: must be between 0 and 1 (exclusive)")
    interval = r.get(table, "enroll", "renew_check_interval", float,
                     default.renew_check_interval)
    r.positive(interval, "enroll.renew_check_interval")
    return EnrollConfig(ca_key_file=ca_key, host=host, port=port, approval=approval,
                        cert_lifetime=lifetime, renew_fraction=fraction,
                        renew_check_interval=interval)
