"""Enrollment commands (docs/wire/enroll.md).

At the primary (its configuration has `[enroll] ca_key_file`):

    outpost token create --config primary.toml --site branch-1 [--ttl 24h]
    outpost token list   --config primary.toml
    outpost token revoke --config primary.toml TOKEN_ID
    outpost site list    --config primary.toml
    outpost site approve --config primary.toml branch-1   # with [enroll] approval = true
    outpost site revoke  --config primary.toml branch-1

At a new site (its configuration has a `[primary]` section naming where the files go):

    outpost enroll --config site.toml --token T --ca-pin sha256:... [--primary URL]
                   [--enroll-url URL] [--wait SECONDS]

Exit status: 0 done, 2 usage or configuration error, 3 refused (bad, used, expired or
revoked token, CA pin mismatch), 75 try again later (primary unreachable, or waiting
for approval).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from appliance.config_enroll import DEFAULT_ENROLL_PORT

EX_TEMPFAIL = 75


def register(commands: Any) -> None:
    token = commands.add_parser("token", help="join tokens for new sites (at the primary)")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True
    create = actions.add_parser("create", help="print a one-time, expiring join token for a site")
    create.add_argument("--config", type=Path, required=True)
    create.add_argument("--site", required=True, help="the name the site will have")
    create.add_argument("--ttl", default="24h",
                        help="how long it may be used: 3600, 15m, 24h, 7d (default 24h); "
                        "0 makes a token that is already expired")
    create.set_defaults(func=token_create_command)
    listing = actions.add_parser("list", help="tokens and their state (never their secret)")
    listing.add_argument("--config", type=Path, required=True)
    listing.set_defaults(func=token_list_command)
    revoke = actions.add_parser("revoke", help="revoke an unused token by its id")
    revoke.add_argument("--config", type=Path, required=True)
    revoke.add_argument("token_id")
    revoke.set_defaults(func=token_revoke_command)

    site = commands.add_parser("site", help="enrolled sites: list, approve, revoke (primary)")
    site_actions = site.add_subparsers(dest="site_command", metavar="ACTION")
    site_actions.required = True
    for name, help_text, func in (
            ("list", "sites, their certificates and pending enrollments", site_list_command),
            ("approve", "approve a site's pending enrollment", site_approve_command),
            ("revoke", "refuse every certificate of a site issued so far", site_revoke_command)):
        action = site_actions.add_parser(name, help=help_text)
        action.add_argument("--config", type=Path, required=True)
        if name != "list":
            action.add_argument("name")
        action.set_defaults(func=func)

    enroll = commands.add_parser("enroll", help="enroll this site with its primary by join token")
    enroll.add_argument("--config", type=Path, required=True)
    enroll.add_argument("--primary", help="the primary's sync URL (default: [primary] url)")
    enroll.add_argument("--enroll-url",
                        help=f"the primary's enrollment URL (default: the primary's host, "
                        f"port {DEFAULT_ENROLL_PORT})")
    enroll.add_argument("--token", help="the join token (default: enroll.toml beside --config)")
    enroll.add_argument("--ca-pin", help="sha256:<hex> of the CA's public key (SPKI)")
    enroll.add_argument("--wait", type=float, default=0.0,
                        help="seconds to keep trying while the primary is unreachable or "
                        "the enrollment waits for approval (default: one try)")
    enroll.set_defaults(func=enroll_command)


def _fail(message: str, status: int) -> int:
    print(message, file=sys.stderr)
    return status


def _primary_config(path: Path) -> Any:
    from appliance.config import load

    config = load(path)
    if config.role != "primary" or config.enroll is None or config.sync is None:
        from appliance.config import ConfigError

        raise ConfigError([f"{path}: enrollment needs role 'primary' with [sync] and "
                           "[enroll] ca_key_file"])
    return config


def _with_primary(args: argparse.Namespace, work: Any) -> int:
    from appliance.config import ConfigError
    from appliance.storage.enroll_store import transaction

    try:
        config = _primary_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    result = transaction(config.database_path, lambda db: work(config, db))
    print(json.dumps(result, indent=None))
    return 0


def token_create_command(args: argparse.Namespace) -> int:
    from appliance.core.enrollment import ca_pin, new_token, parse_duration, secret_digest
    from appliance.storage.enroll_store import create_token_sync

    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if not args.site or "/" in args.site or args.site != args.site.strip():
        return _fail("--site: a name without '/' or surrounding spaces", 2)
    token = new_token()

    def work(config: Any, db: Any) -> dict[str, Any]:
        now = time.time()
        create_token_sync(db, token.token_id, secret_digest(token.secret), args.site, now,
                          now + ttl)
        return {"token": token.text, "token_id": token.token_id, "site": args.site,
                "expires_at": now + ttl, "ca_pin": ca_pin(config.sync.ca_file.read_bytes())}

    return _with_primary(args, work)


def token_list_command(args: argparse.Namespace) -> int:
    from appliance.storage.enroll_store import list_tokens_sync

    return _with_primary(args, lambda config, db: list_tokens_sync(db))


def token_revoke_command(args: argparse.Namespace) -> int:
    from appliance.storage.enroll_store import revoke_token_sync

    return _with_primary(args, lambda config, db: {
        "revoked": revoke_token_sync(db, args.token_id, time.time())})


def site_list_command(args: argparse.Namespace) -> int:
    from appliance.storage.enroll_store import list_sites_sync

    return _with_primary(args, lambda config, db: list_sites_sync(db))


def site_approve_command(args: argparse.Namespace) -> int:
    from appliance.storage.enroll_store import approve_site_sync

    return _with_primary(args, lambda config, db: {
        "site": args.name, "approved": approve_site_sync(db, args.name, time.time())})


def site_revoke_command(args: argparse.Namespace) -> int:
    from appliance.storage.enroll_store import revoke_site_sync

    return _with_primary(args, lambda config, db: {
        "site": args.name, "revoked": revoke_site_sync(db, args.name, time.time())})


# ---------------------------------------------------------------- the site


def enroll_settings(config_path: Path) -> dict[str, str]:
    """`enroll.toml` beside the configuration (written by the first-boot seed), if any."""
    path = config_path.parent / "enroll.toml"
    if not path.is_file():
        return {}
    return {k: str(v) for k, v in tomllib.loads(path.read_text()).items()}


def default_enroll_url(primary_url: str) -> str:
    parts = urlsplit(primary_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit(("https", f"{host}:{DEFAULT_ENROLL_PORT}", "", "", ""))


def enroll(config_path: Path, *, primary: str | None = None, enroll_url: str | None = None,
           token: str | None = None, ca_pin: str | None = None, wait: float = 0.0,
           poll: float = 1.0) -> tuple[int, dict[str, Any]]:
    """Enroll the site of `config_path`; (exit status, report)."""
    from appliance.config import ConfigError, load
    from appliance.core.enrollment import EnrollError, SiteFiles, enroll_site
    from appliance.protocols.http.enroll_api import EnrollUnavailable, fetch_ca, post_enroll

    try:
        config = load(config_path)
    except ConfigError as exc:
        return 2, {"error": str(exc)}
    link = config.primary
    if config.role != "site" or link is None:
        return 2, {"error": f"{config_path}: a site with a [primary] section (url, ca_file, "
                            "cert_file, key_file: where enrollment writes them) is needed"}
    seeded = enroll_settings(config_path)
    primary = primary or seeded.get("primary") or link.url
    enroll_url = enroll_url or seeded.get("enroll_url") or default_enroll_url(primary)
    token = token or seeded.get("token")
    ca_pin = ca_pin or seeded.get("ca_pin")
    if not token or not ca_pin:
        return 2, {"error": "--token and --ca-pin are required (or enroll.toml beside the "
                            "configuration)"}
    files = SiteFiles(link.ca_file, link.cert_file, link.key_file, config.card_key_path)
    deadline = time.monotonic() + wait
    while True:
        try:
            result = enroll_site(config.name, enroll_url, token, ca_pin, files,
                                 fetch_ca=fetch_ca, post_enroll=post_enroll)
        except EnrollError as exc:
            return 3, {"error": str(exc), "code": exc.code, "status": exc.status}
        except (EnrollUnavailable, ValueError) as exc:
            result = {"status": "unavailable", "error": str(exc)}
        if result["status"] == "enrolled":
            result.update(site=config.name, cert_file=str(link.cert_file))
            return 0, result
        if time.monotonic() + poll > deadline:
            return EX_TEMPFAIL, result
        time.sleep(poll)


def enroll_command(args: argparse.Namespace) -> int:
    status, report = enroll(args.config, primary=args.primary, enroll_url=args.enroll_url,
                            token=args.token, ca_pin=args.ca_pin, wait=args.wait)
    print(json.dumps(report), file=sys.stdout if status == 0 else sys.stderr)
    return status


def enroll_before_serve(config_path: Path, config: Any, *, wait: float = 25.0,
                        poll: float = 2.0) -> int:
    """`outpost serve` of a site that has a `[primary]` but no certificate yet, and an
    enroll.toml beside its configuration (the first-boot seed's): enroll first.

    It keeps trying for `wait` seconds (under the unit's watchdog) while the primary is
    unreachable or approval is pending, then ends `serve` with 75 so that systemd's
    Restart= tries again later. A refusal (bad, used, expired or revoked token, CA pin
    mismatch) ends it with 2, which the unit does not restart: only a new token helps."""
    link = config.primary
    if config.role != "site" or link is None or link.cert_file.exists():
        return 0
    if not enroll_settings(config_path):
        return 0
    status, report = enroll(config_path, wait=wait, poll=poll)
    if status == 3:
        status = 2
    print(json.dumps({"event": "enroll", **report}), file=sys.stderr if status else sys.stdout,
          flush=True)
    return status
