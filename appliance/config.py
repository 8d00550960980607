"""Configuration: one TOML file, one class per section, every error reported at once.

A mistake is reported with its path in the file (`devices[1].uri: ...`), and
all mistakes together, so that an installer fixes the file in one go.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.config_auth import (
    DEVICE_AUTH_KEYS,
    IPP_SECURITY_KEYS,
    DirectoryConfig,
    IppSecurityConfig,
    check_basic_needs_tls,
    parse_device_auth,
    parse_directory,
    parse_ipp_security,
)
from appliance.config_enroll import EnrollConfig, parse_enroll
from appliance.config_link import LinkSettings, link_timings, tls_files
from appliance.config_offline import OfflineConfig, parse_offline
from appliance.config_provider import ProviderLinkConfig, parse_provider
from appliance.core.charging import LAB_POLICY, CostPolicy, Rates
from appliance.core.credentials import CardRule
from appliance.protocols.lpd.parser import parse_lpd_uri

DEFAULT_IPP_PORT = 8631
DEFAULT_DEVICE_API_PORT = 8632
#: LPD's own port is 515, which needs CAP_NET_BIND_SERVICE.
DEFAULT_LPD_PORT = 8515


class ConfigError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("configuration errors:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


class _Reader:
    """Reads typed values out of nested dicts, collecting errors instead of raising."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def get(self, table: dict[str, Any], path: str, key: str, kind: type | tuple[type, ...],
            default: Any = None, required: bool = False) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in table:
            if required:
                self.errors.append(f"{where}: required")
            return default
        value = table[key]
        if kind is int and isinstance(value, bool):
            self.errors.append(f"{where}: expected an integer, got {value!r}")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            self.errors.append(f"{where}: expected {expected}, got {value!r}")
            return default
        return value

    def table(self, table: dict[str, Any], path: str, key: str) -> dict[str, Any]:
        value = self.get(table, path, key, dict, {})
        return value if isinstance(value, dict) else {}

    def positive(self, value: Any, where: str) -> None:
        if isinstance(value, int | float) and value <= 0:
            self.errors.append(f"{where}: must be positive")

    def unknown(self, table: dict[str, Any], path: str, known: set[str]) -> None:
        for key in table:
            if key not in known:
                self.errors.append(f"{path + '.' if path else ''}{key}: unknown setting")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class SnmpV3Config:
    user: str
    auth_key: str
    priv_key: str
    auth_protocol: str = "SHA"
    priv_protocol: str = "AES"


@dataclass(frozen=True)
class DeviceSnmpConfig:
    """How the site reads a device over SNMP: v2c `community`, or `v3` (USM authPriv)."""

    host: str
    port: int = 161
    community: str | None = None
    v3: SnmpV3Config | None = None


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    uri: str
    protocol: str = "ipp"
    colour: bool = True
    duplex: bool = True
    cost_policy: str = "default"
    snmp: DeviceSnmpConfig | None = None
    #: Whom this device's direct queue trusts (None: the site's `[ipp] auth`).
    ipp_auth: str | None = None
    #: How this device's card reader reports cards (None: as read, `CardRule()`).
    card_rule: CardRule | None = None


@dataclass(frozen=True)
class SnmpConfig:
    """The SNMP poller: every `interval` seconds, `timeout` seconds per try, `retries` more tries."""

    interval: float = 10.0
    timeout: float = 2.0
    retries: int = 1


@dataclass(frozen=True)
class JobsConfig:
    hold_hours: float = 24.0
    max_document_mb: float = 256.0
    max_user_mb: float = 1024.0
    max_total_mb: float = 8192.0
    #: Free-space floor of the spool's filesystem: below it no new job is accepted
    #: (storage/disk.py), so that the database keeps room for charges.
    min_free_mb: float = 64.0
    expire_interval: float = 60.0
    use_ghostscript: bool = True


@dataclass(frozen=True)
class MonitorConfig:
    """Watching devices over IPP too (Get-Printer-Attributes): every `ipp_interval` s, 0: off."""

    ipp_interval: float = 0.0
    ipp_timeout: float = 5.0


@dataclass(frozen=True)
class ReleaseConfig:
    poll_interval: float = 0.25
    follow_timeout: float = 120.0


@dataclass(frozen=True)
class AuthConfig:
    session_idle: float = 300.0
    session_max_age: float = 3600.0
    max_failures: int = 5
    failure_window: float = 300.0
    lockout: float = 60.0
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536


@dataclass(frozen=True, kw_only=True)
class PrimaryLinkConfig(LinkSettings):
    """`[primary]` of a site: where its primary is and how it talks to it (mutual TLS)."""

    url: str


@dataclass(frozen=True)
class SyncListenConfig:
    """`[sync]` of the primary: the HTTPS port sites sync with, and its certificates."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path


DEFAULT_SYNC_PORT = 8633


def _primary_link(r: _Reader, root: dict[str, Any], role: str,
                  base_dir: Path | None) -> PrimaryLinkConfig | None:
    if "primary" not in root:
        return None
    table = r.table(root, "", "primary")
    if role != "site":
        r.errors.append("primary: only a site has a primary (this is role "
                        f"{role!r})")
    known = set(PrimaryLinkConfig.__dataclass_fields__)
    r.unknown(table, "primary", known)
    url = r.get(table, "primary", "url", str, "", required=True)
    if url and not url.startswith("https://"):
        r.errors.append("primary.url: expected https://host:port")
    ca, cert, key = tls_files(r, table, "primary", base_dir)
    values = link_timings(r, table, "primary")
    return PrimaryLinkConfig(url=url, ca_file=ca, cert_file=cert, key_file=key, **values)


def _sync_listen(r: _Reader, root: dict[str, Any], role: str,
                 base_dir: Path | None) -> SyncListenConfig | None:
    if "sync" not in root:
        if role == "primary":
            r.errors.append("sync: required for role 'primary' (host, port, ca_file, "
                            "cert_file, key_file)")
        return None
    table = r.table(root, "", "sync")
    if role not in ("primary", "site"):
        r.errors.append(f"sync: only the primary and a site serve sync (this is role {role!r})")
    r.unknown(table, "sync", {"host", "port", "ca_file", "cert_file", "key_file"})
    host = r.get(table, "sync", "host", str, "127.0.0.1")
    port = r.get(table, "sync", "port", int, DEFAULT_SYNC_PORT)
    if isinstance(port, int) and not 0 <= port <= 65535:
        r.errors.append("sync.port: must be 0..65535")
    ca, cert, key = tls_files(r, table, "sync", base_dir)
    return SyncListenConfig(host=host, port=port, ca_file=ca, cert_file=cert, key_file=key)


@dataclass(frozen=True)
class SiteConfig:
    role: str
    name: str
    state_dir: Path
    secrets_dir: Path
    ipp: Listen
    device_api: Listen
    jobs: JobsConfig
    release: ReleaseConfig
    auth: AuthConfig
    cost_policies: dict[str, CostPolicy]
    devices: list[DeviceConfig] = field(default_factory=list)
    log_level: str = "INFO"
    snmp: SnmpConfig = field(default_factory=SnmpConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    primary: PrimaryLinkConfig | None = None   # role 'site': the uplink, when there is one
    provider: ProviderLinkConfig | None = None  # role 'provider': its ordered upstreams
    sync: SyncListenConfig | None = None       # role 'primary': where sites sync
    lpd: Listen = field(default_factory=lambda: Listen("127.0.0.1", DEFAULT_LPD_PORT))
    directory: DirectoryConfig | None = None   # `[directory]`: LDAP password checks
    offline: OfflineConfig | None = None       # `[offline]` (primary): offline allowances
    enroll: EnrollConfig | None = None         # `[enroll]`: join tokens, rotation
    ipp_security: IppSecurityConfig = field(default_factory=IppSecurityConfig)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "outpost.sqlite3"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def card_key_path(self) -> Path:
        return self.secrets_dir / "card-hmac.key"


def _listen(r: _Reader, root: dict[str, Any], key: str, default_port: int,
            extra: frozenset[str] = frozenset()) -> Listen:
    table = r.table(root, "", key)
    r.unknown(table, key, {"host", "port", *extra})
    host = r.get(table, key, "host", str, "127.0.0.1")
    port = r.get(table, key, "port", int, default_port)
    if isinstance(port, int) and not 0 <= port <= 65535:
        r.errors.append(f"{key}.port: must be 0..65535")
    return Listen(host, port)


def _rates(r: _Reader, table: dict[str, Any], path: str) -> Rates:
    r.unknown(table, path, {"mono", "colour", "duplex_mono", "duplex_colour"})
    values = {}
    for name in ("mono", "colour", "duplex_mono", "duplex_colour"):
        value = r.get(table, path, name, int, None, required=name in ("mono", "colour"))
        if isinstance(value, int) and value < 0:
            r.errors.append(f"{path}.{name}: must not be negative")
        values[name] = value
    return Rates(mono=values["mono"] or 0, colour=values["colour"] or 0,
                 duplex_mono=values["duplex_mono"], duplex_colour=values["duplex_colour"])


def _policy(r: _Reader, table: dict[str, Any], path: str) -> CostPolicy:
    r.unknown(table, path, {"default", "sizes", "copy", "scan", "fax"})
    default = _rates(r, r.table(table, path, "default"), f"{path}.default")
    sizes = {name: _rates(r, body if isinstance(body, dict) else {}, f"{path}.sizes.{name}")
             for name, body in r.table(table, path, "sizes").items()}
    copy_table = r.table(table, path, "copy")
    copy = _rates(r, copy_table, f"{path}.copy") if copy_table else None
    return CostPolicy(default=default, sizes=sizes, copy=copy,
                      scan=r.get(table, path, "scan", int, 0), fax=r.get(table, path, "fax", int, 0))


def _section(r: _Reader, root: dict[str, Any], key: str, cls: type) -> Any:
    table = r.table(root, "", key)
    defaults = cls()
    known = set(defaults.__dataclass_fields__)
    r.unknown(table, key, known)
    values = {}
    for name in known:
        default = getattr(defaults, name)
        value = r.get(table, key, name, type(default), default)
        if isinstance(value, int | float) and not isinstance(value, bool):
            r.positive(value, f"{key}.{name}")
        values[name] = value
    return cls(**values)


SNMP_AUTH_PROTOCOLS = ("SHA", "SHA-256", "SHA-512", "MD5")
SNMP_PRIV_PROTOCOLS = ("AES", "AES128", "DES")


def _snmp(r: _Reader, root: dict[str, Any]) -> SnmpConfig:
    table = r.table(root, "", "snmp")
    r.unknown(table, "snmp", {"interval", "timeout", "retries"})
    interval = r.get(table, "snmp", "interval", float, 10.0)
    timeout = r.get(table, "snmp", "timeout", float, 2.0)
    retries = r.get(table, "snmp", "retries", int, 1)
    r.positive(interval, "snmp.interval")
    r.positive(timeout, "snmp.timeout")
    if isinstance(retries, int) and not 0 <= retries <= 10:
        r.errors.append("snmp.retries: must be 0..10")
    return SnmpConfig(interval=interval, timeout=timeout, retries=retries)


def _monitor(r: _Reader, root: dict[str, Any]) -> MonitorConfig:
    table = r.table(root, "", "monitor")
    r.unknown(table, "monitor", {"ipp_interval", "ipp_timeout"})
    interval = r.get(table, "monitor", "ipp_interval", float, 0.0)
    timeout = r.get(table, "monitor", "ipp_timeout", float, 5.0)
    if isinstance(interval, float) and interval < 0:
        r.errors.append("monitor.ipp_interval: must not be negative (0: off)")
    r.positive(timeout, "monitor.ipp_timeout")
    return MonitorConfig(ipp_interval=interval, ipp_timeout=timeout)


def _device_snmp(r: _Reader, body: dict[str, Any], path: str, uri: str) -> DeviceSnmpConfig | None:
    if "snmp" not in body:
        return None
    path = f"{path}.snmp"
    table = r.table(body, path.rsplit(".", 1)[0], "snmp")
    r.unknown(table, path, {"host", "port", "community", "v3"})
    from urllib.parse import urlsplit

    try:
        default_host = urlsplit(uri).hostname or ""
    except ValueError:
        default_host = ""
    host = r.get(table, path, "host", str, default_host)
    if not host:
        r.errors.append(f"{path}.host: required (the device URI names no host)")
    port = r.get(table, path, "port", int, 161)
    if isinstance(port, int) and not 1 <= port <= 65535:
        r.errors.append(f"{path}.port: must be 1..65535")
    community = r.get(table, path, "community", str, None)
    v3: SnmpV3Config | None = None
    if "v3" in table:
        v3_table = r.table(table, path, "v3")
        v3_path = f"{path}.v3"
        r.unknown(v3_table, v3_path, {"user", "auth_protocol", "auth_key", "priv_protocol",
                                      "priv_key"})
        keys = {}
        for key in ("auth_key", "priv_key"):
            keys[key] = r.get(v3_table, v3_path, key, str, "", required=True)
            if keys[key] and len(keys[key]) < 8:
                r.errors.append(f"{v3_path}.{key}: must be at least 8 characters (RFC 3414)")
        auth = r.get(v3_table, v3_path, "auth_protocol", str, "SHA")
        priv = r.get(v3_table, v3_path, "priv_protocol", str, "AES")
        if auth.upper() not in SNMP_AUTH_PROTOCOLS:
            r.errors.append(f"{v3_path}.auth_protocol: one of {', '.join(SNMP_AUTH_PROTOCOLS)}")
        if priv.upper() not in SNMP_PRIV_PROTOCOLS:
            r.errors.append(f"{v3_path}.priv_protocol: one of {', '.join(SNMP_PRIV_PROTOCOLS)}")
        v3 = SnmpV3Config(user=r.get(v3_table, v3_path, "user", str, "", required=True),
                          auth_key=keys["auth_key"], priv_key=keys["priv_key"],
                          auth_protocol=auth.upper(), priv_protocol=priv.upper())
    if community is not None and v3 is not None:
        r.errors.append(f"{path}: give either community (v2c) or v3, not both")
    if community is None and v3 is None:
        community = "public"
    return DeviceSnmpConfig(host=host, port=port, community=community, v3=v3)


def parse(root: dict[str, Any], *, base_dir: Path | None = None) -> SiteConfig:
    r = _Reader()
    r.unknown(root, "", {"role", "name", "state_dir", "secrets_dir", "ipp", "device_api", "jobs",
                         "release", "auth", "cost_policy", "devices", "log_level", "snmp", "primary", "sync",
                         "provider", "monitor", "lpd", "directory", "offline", "enroll"})
    role = r.get(root, "", "role", str, "site")
    if role not in ("site", "primary", "provider"):
        r.errors.append(f"role: {role!r} is not supported (this build serves 'site', "
                        "'provider' and 'primary')")
    name = r.get(root, "", "name", str, "site", required=True)
    if isinstance(name, str) and ("/" in name or not name.strip()):
        r.errors.append("name: a non-empty name without '/' (it prefixes the site's sync "
                        "event ids)")
    state_dir = Path(r.get(root, "", "state_dir", str, "/var/lib/outpost"))
    secrets_dir = Path(r.get(root, "", "secrets_dir", str, str(state_dir.parent / "secrets")))
    if base_dir is not None:
        state_dir = base_dir / state_dir
        secrets_dir = base_dir / secrets_dir
    if secrets_dir.resolve() == state_dir.resolve() or state_dir.resolve() in (
        secrets_dir.resolve().parents
    ):
        r.errors.append("secrets_dir: must not be inside state_dir (keys stay apart from data)")
    policies: dict[str, CostPolicy] = {}
    for policy_name, body in r.table(root, "", "cost_policy").items():
        if not isinstance(body, dict):
            r.errors.append(f"cost_policy.{policy_name}: expected a table")
            continue
        policies[policy_name] = _policy(r, body, f"cost_policy.{policy_name}")
    policies.setdefault("default", LAB_POLICY)
    devices: list[DeviceConfig] = []
    raw_devices = r.get(root, "", "devices", list, [])
    seen: set[str] = set()
    for i, body in enumerate(raw_devices):
        path = f"devices[{i}]"
        if not isinstance(body, dict):
            r.errors.append(f"{path}: expected a table")
            continue
        r.unknown(body, path, {"name", "uri", "protocol", "colour", "duplex", "cost_policy",
                               "snmp", *DEVICE_AUTH_KEYS})
        device = DeviceConfig(
            name=r.get(body, path, "name", str, "", required=True),
            uri=r.get(body, path, "uri", str, "", required=True),
            protocol=r.get(body, path, "protocol", str, "ipp"),
            colour=r.get(body, path, "colour", bool, True),
            duplex=r.get(body, path, "duplex", bool, True),
            cost_policy=r.get(body, path, "cost_policy", str, "default"),
        )
        device = replace(device, snmp=_device_snmp(r, body, path, device.uri))
        ipp_auth, card_rule = parse_device_auth(r, body, path)
        device = replace(device, ipp_auth=ipp_auth, card_rule=card_rule)
        if device.name in seen:
            r.errors.append(f"{path}.name: {device.name!r} is used twice")
        if device.name == "findme":
            r.errors.append(f"{path}.name: 'findme' is the Find-Me queue's name")
        seen.add(device.name)
        if device.protocol not in ("ipp", "lpd"):
            r.errors.append(f"{path}.protocol: 'ipp' or 'lpd'")
        elif device.protocol == "lpd" and device.uri:
            try:
                parse_lpd_uri(device.uri)
            except ValueError:
                r.errors.append(f"{path}.uri: expected lpd://host[:port]/queue")
        elif device.uri and not device.uri.startswith(("ipp://", "ipps://")):
            r.errors.append(f"{path}.uri: expected an ipp:// or ipps:// URI")
        if device.cost_policy not in policies:
            r.errors.append(f"{path}.cost_policy: no cost_policy named {device.cost_policy!r}")
        devices.append(device)
    config = SiteConfig(
        role=role, name=name, state_dir=state_dir, secrets_dir=secrets_dir,
        ipp=_listen(r, root, "ipp", DEFAULT_IPP_PORT, frozenset(IPP_SECURITY_KEYS)),
        device_api=_listen(r, root, "device_api", DEFAULT_DEVICE_API_PORT),
        jobs=_section(r, root, "jobs", JobsConfig),
        release=_section(r, root, "release", ReleaseConfig),
        auth=_section(r, root, "auth", AuthConfig),
        cost_policies=policies, devices=devices,
        log_level=r.get(root, "", "log_level", str, "INFO"),
        snmp=_snmp(r, root),
        monitor=_monitor(r, root),
        primary=_primary_link(r, root, role, base_dir),
        sync=_sync_listen(r, root, role, base_dir),
        provider=parse_provider(r, root, role, base_dir),
        lpd=_listen(r, root, "lpd", DEFAULT_LPD_PORT),
        directory=parse_directory(r, root, base_dir),
        offline=parse_offline(r, root, role),
        enroll=parse_enroll(r, root, role, base_dir),
        ipp_security=parse_ipp_security(r, root, base_dir),
    )
    check_basic_needs_tls(r, config.ipp.host, config.ipp_security,
                          [d.ipp_auth for d in devices])
    if r.errors:
        raise ConfigError(r.errors)
    if config.role == "site" and config.primary is None and config.provider is not None:
        # A promoted provider (docs/providers.md): its first upstream is its primary.
        link = config.provider
        config = replace(config, primary=PrimaryLinkConfig(url=link.upstreams[0],
                                                           **link.settings()))
    return config


def load(path: Path) -> SiteConfig:
    try:
        with open(path, "rb") as f:
            root = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    from appliance.config_dropins import read_dropins

    root, dropin_errors = read_dropins(path, root)   # <path>.d/*.toml, in name order
    if dropin_errors:
        raise ConfigError(dropin_errors)
    return parse(root)
