"""Configuration of who is who: `[directory]`, IPP authentication and TLS, card reader rules.

Parsed by `config.parse` with its error collector (`r`); kept apart so that the
identity settings live in one place. Secrets are never in the TOML file: the
directory's service-account password is in `bind_password_file` (mode 0600, read
once at start-up, never logged).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.core.credentials import CARD_FORMATS, CardRule

IPP_AUTH_MODES = ("requesting-user-name", "basic")
SYNC_SCHEMAS = ("openldap", "active-directory")


@dataclass(frozen=True)
class DirectoryConfig:
    """`[directory]`: the LDAP server this site checks passwords against."""

    url: str
    base_dn: str
    user_filter: str = "(uid={username})"
    username_attribute: str = "uid"
    bind_dn: str = ""
    bind_password_file: Path | None = None
    ca_file: Path | None = None
    starttls: bool = False
    timeout: float = 5.0
    verifier_max_age_hours: float = 168.0
    pool_size: int = 4
    #: The primary's directory sync: attribute mapping "openldap" or "active-directory",
    #: and which entries are people and groups ("" = the schema's default filter).
    sync_schema: str = "openldap"
    sync_user_filter: str = ""
    sync_group_filter: str = ""
    sync_group_base_dn: str = ""

    def bind_password(self) -> str:
        """The service account's password, from its 0600 file (empty if none is set)."""
        if self.bind_password_file is None:
            return ""
        return read_secret_file(self.bind_password_file)


def read_secret_file(path: Path) -> str:
    """A secret's text from a file nobody but the owner may read (mode 0600 or stricter)."""
    import stat

    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
    return path.read_text(encoding="utf-8").rstrip("\r\n")


@dataclass(frozen=True)
class IppSecurityConfig:
    """`[ipp] auth`, `tls_cert_file`, `tls_key_file`: whom the queues trust, and ipps://."""

    auth: str = "requesting-user-name"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def _path(value: Any, base_dir: Path | None) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    return base_dir / value if base_dir is not None else Path(value)


def parse_directory(r: Any, root: dict[str, Any], base_dir: Path | None) -> DirectoryConfig | None:
    if "directory" not in root:
        return None
    table = r.table(root, "", "directory")
    r.unknown(table, "directory", set(DirectoryConfig.__dataclass_fields__))
    url = r.get(table, "directory", "url", str, "", required=True)
    if url and not url.startswith(("ldap://", "ldaps://")):
        r.errors.append("directory.url: expected ldap://host[:port] or ldaps://host[:port]")
    user_filter = r.get(table, "directory", "user_filter", str, "(uid={username})")
    if "{username}" not in user_filter:
        r.errors.append("directory.user_filter: must contain {username}")
    starttls = r.get(table, "directory", "starttls", bool, False)
    if starttls and url.startswith("ldaps://"):
        r.errors.append("directory.starttls: only for ldap:// (ldaps:// is TLS already)")
    timeout = r.get(table, "directory", "timeout", float, 5.0)
    max_age = r.get(table, "directory", "verifier_max_age_hours", float, 168.0)
    pool = r.get(table, "directory", "pool_size", int, 4)
    r.positive(timeout, "directory.timeout")
    r.positive(max_age, "directory.verifier_max_age_hours")
    if isinstance(pool, int) and not 1 <= pool <= 64:
        r.errors.append("directory.pool_size: must be 1..64")
    password_file = _path(r.get(table, "directory", "bind_password_file", str, ""), base_dir)
    bind_dn = r.get(table, "directory", "bind_dn", str, "")
    if bind_dn and password_file is None:
        r.errors.append("directory.bind_password_file: required with bind_dn")
    if "bind_password" in table:
        r.errors.append("directory.bind_password: put the password in bind_password_file "
                        "(mode 0600), not in the configuration")
    schema = r.get(table, "directory", "sync_schema", str, "openldap")
    if schema not in SYNC_SCHEMAS:
        r.errors.append(f"directory.sync_schema: one of {', '.join(SYNC_SCHEMAS)}")
    return DirectoryConfig(
        sync_schema=schema,
        sync_user_filter=r.get(table, "directory", "sync_user_filter", str, ""),
        sync_group_filter=r.get(table, "directory", "sync_group_filter", str, ""),
        sync_group_base_dn=r.get(table, "directory", "sync_group_base_dn", str, ""),
        url=url, base_dn=r.get(table, "directory", "base_dn", str, "", required=True),
        user_filter=user_filter,
        username_attribute=r.get(table, "directory", "username_attribute", str, "uid"),
        bind_dn=bind_dn, bind_password_file=password_file,
        ca_file=_path(r.get(table, "directory", "ca_file", str, ""), base_dir),
        starttls=starttls, timeout=timeout, verifier_max_age_hours=max_age, pool_size=pool)


IPP_SECURITY_KEYS = {"auth", "tls_cert_file", "tls_key_file"}


def parse_ipp_security(r: Any, root: dict[str, Any], base_dir: Path | None) -> IppSecurityConfig:
    table = r.table(root, "", "ipp")
    auth = r.get(table, "ipp", "auth", str, "requesting-user-name")
    if auth not in IPP_AUTH_MODES:
        r.errors.append(f"ipp.auth: one of {', '.join(IPP_AUTH_MODES)}")
    cert = _path(r.get(table, "ipp", "tls_cert_file", str, ""), base_dir)
    key = _path(r.get(table, "ipp", "tls_key_file", str, ""), base_dir)
    if (cert is None) != (key is None):
        r.errors.append("ipp.tls_cert_file, ipp.tls_key_file: give both or neither")
    return IppSecurityConfig(auth=auth, tls_cert_file=cert, tls_key_file=key if cert else None)


DEVICE_AUTH_KEYS = {"ipp_auth", "card_format", "card_strip_facility", "card_number_bits",
                    "card_digits"}


def parse_device_auth(r: Any, body: dict[str, Any], path: str) -> tuple[str | None, CardRule | None]:
    """A device's `ipp_auth` (its direct queue; None: the site's) and card reader rule."""
    ipp_auth = r.get(body, path, "ipp_auth", str, None)
    if ipp_auth is not None and ipp_auth not in IPP_AUTH_MODES:
        r.errors.append(f"{path}.ipp_auth: one of {', '.join(IPP_AUTH_MODES)}")
    if not any(k in body for k in ("card_format", "card_strip_facility", "card_number_bits",
                                   "card_digits")):
        return ipp_auth, None
    card_format = r.get(body, path, "card_format", str, "raw")
    strip = r.get(body, path, "card_strip_facility", bool, False)
    bits = r.get(body, path, "card_number_bits", int, 16)
    digits = r.get(body, path, "card_digits", int, 10)
    if card_format not in CARD_FORMATS:
        r.errors.append(f"{path}.card_format: one of {', '.join(CARD_FORMATS)}")
        return ipp_auth, None
    try:
        return ipp_auth, CardRule(card_format, strip, bits, digits)
    except ValueError as exc:
        r.errors.append(f"{path}.card_format: {exc}")
        return ipp_auth, None


def check_basic_needs_tls(r: Any, host: str, security: IppSecurityConfig,
                          device_modes: list[str | None]) -> None:
    """HTTP Basic sends the password in the clear: only over ipps://, or on loopback."""
    uses_basic = security.auth == "basic" or "basic" in device_modes
    if not uses_basic or security.tls:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        r.errors.append("ipp.tls_cert_file: queues with auth 'basic' need ipps:// (give "
                        "tls_cert_file and tls_key_file) unless ipp.host is loopback")
