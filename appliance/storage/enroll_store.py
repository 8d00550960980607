"""Every SQL statement of enrollment (docs/wire/enroll.md), at the primary.

Tables (created by `ensure_schema_sync`, `IF NOT EXISTS`, so that they need no slot in
the numbered migrations; they exist only where a primary enrolls sites):

- `enroll_tokens`: one row per join token: its public id, the SHA-256 of its secret
  (never the secret), the site it is bound to, its expiry, when and by which key
  (SHA-256 of the CSR's SubjectPublicKeyInfo) it was used, and whether it was revoked.
- `enroll_requests`: one per redeemed token: pending (approval), approved, issued,
  rejected; the serial issued for it.
- `site_certificates`: every certificate the primary signed (enrollment and renewal),
  with `revoked_at`.
- `revoked_sites`: `outpost site revoke NAME`: every certificate of NAME issued before
  `revoked_at` is refused, including ones this table never saw (`outpost pki issue`).

The `_sync` functions are transaction bodies; `EnrollStore` runs each in one committed
transaction of the database thread; the command line runs them with `transaction`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from .database import Database, connect, migrate
from .sync_store import record_peer_sync

T = TypeVar("T")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS enroll_tokens (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        site TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        used_spki TEXT,
        revoked_at REAL)""",
    """CREATE TABLE IF NOT EXISTS enroll_requests (
        token_id TEXT PRIMARY KEY REFERENCES enroll_tokens(id),
        site TEXT NOT NULL,
        spki TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'issued', 'rejected')),
        requested_at REAL NOT NULL,
        decided_at REAL,
        serial TEXT)""",
    "CREATE INDEX IF NOT EXISTS enroll_requests_site ON enroll_requests(site, status)",
    """CREATE TABLE IF NOT EXISTS site_certificates (
        serial TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        spki TEXT NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL,
        how TEXT NOT NULL CHECK (how IN ('enroll', 'renew')),
        cert_pem TEXT NOT NULL,
        revoked_at REAL)""",
    "CREATE INDEX IF NOT EXISTS site_certificates_site ON site_certificates(site)",
    """CREATE TABLE IF NOT EXISTS revoked_sites (
        site TEXT PRIMARY KEY,
        revoked_at REAL NOT NULL)""",
)

#: signer(now) -> (serial hex, certificate PEM, not_after)
Signer = Callable[[float], tuple[str, str, float]]


def ensure_schema_sync(db: sqlite_utils.Database) -> None:
    for statement in SCHEMA:
        db.execute(statement)


def _row(db: sqlite_utils.Database, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return db.execute(sql, params).fetchone()


# ---------------------------------------------------------------- tokens


def create_token_sync(db: sqlite_utils.Database, token_id: str, secret_sha256: str, site: str,
                      now: float, expires_at: float) -> None:
    db.execute("INSERT INTO enroll_tokens (id, secret_sha256, site, created_at, expires_at) "
               "VALUES (?, ?, ?, ?, ?)", (token_id, secret_sha256, site, now, expires_at))


def _token(db: sqlite_utils.Database, token_id: str, secret_sha256: str) -> Any:
    row = _row(db, "SELECT * FROM enroll_tokens WHERE id = ?", (token_id,))
    if row is None or not hmac.compare_digest(row["secret_sha256"], secret_sha256):
        return None
    return row


def token_site_sync(db: sqlite_utils.Database, token_id: str, secret_sha256: str) -> str | None:
    row = _token(db, token_id, secret_sha256)
    return None if row is None else str(row["site"])


def list_tokens_sync(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    rows = db.execute("SELECT id, site, created_at, expires_at, used_at, revoked_at "
                      "FROM enroll_tokens ORDER BY created_at").fetchall()
    return [dict(r) for r in rows]


def revoke_token_sync(db: sqlite_utils.Database, token_id: str, now: float) -> int:
    cursor = db.execute("UPDATE enroll_tokens SET revoked_at = ? "
                        "WHERE id = ? AND revoked_at IS NULL AND used_at IS NULL",
                        (now, token_id))
    return int(cursor.rowcount)


def _record_certificate(db: sqlite_utils.Database, site: str, spki: str, now: float,
                        how: str, signer: Signer) -> tuple[str, str, float]:
    serial, cert_pem, not_after = signer(now)
    db.execute("INSERT INTO site_certificates (serial, site, spki, issued_at, not_after, how, "
               "cert_pem) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (serial, site, spki, now, not_after, how, cert_pem))
    return serial, cert_pem, not_after


def _issue_for_request(db: sqlite_utils.Database, token_id: str, site: str, spki: str,
                       now: float, signer: Signer) -> tuple[str, str]:
    serial, cert_pem, _ = _record_certificate(db, site, spki, now, "enroll", signer)
    # Enrollment issues `site` certificates: from now on a relay claiming this name as its
    # origin is refused, not held (docs/providers.md, "Identities").
    record_peer_sync(db, site, "site", now)
    db.execute("UPDATE enroll_requests SET status = 'issued', serial = ?, "
               "decided_at = COALESCE(decided_at, ?) WHERE token_id = ?",
               (serial, now, token_id))
    return "issued", cert_pem


def redeem_sync(db: sqlite_utils.Database, token_id: str, secret_sha256: str, spki: str,
                now: float, approval: bool, signer: Signer) -> tuple[str, ...]:
    """Use a join token for the key `spki`. Answers ("issued", cert PEM), ("pending",), or
    a refusal: ("unknown",), ("revoked",), ("used",), ("expired",), ("rejected",).

    The same token presented again with the same key (a site retrying after a lost
    answer, or polling while it waits for approval) gets the same outcome; with any
    other key it is a reused token."""
    row = _token(db, token_id, secret_sha256)
    if row is None:
        return ("unknown",)
    if row["revoked_at"] is not None:
        return ("revoked",)
    site = str(row["site"])
    if row["used_at"] is not None:
        if row["used_spki"] != spki:
            return ("used",)
        request = _row(db, "SELECT * FROM enroll_requests WHERE token_id = ?", (token_id,))
        status = request["status"]
        if status == "issued":
            cert = _row(db, "SELECT cert_pem FROM site_certificates WHERE serial = ?",
                        (request["serial"],))
            return ("issued", str(cert["cert_pem"]))
        if status == "approved":
            return _issue_for_request(db, token_id, site, spki, now, signer)
        return (str(status),)
    if now >= row["expires_at"]:
        return ("expired",)
    db.execute("UPDATE enroll_tokens SET used_at = ?, used_spki = ? WHERE id = ?",
               (now, spki, token_id))
    db.execute("INSERT INTO enroll_requests (token_id, site, spki, status, requested_at) "
               "VALUES (?, ?, ?, 'pending', ?)", (token_id, site, spki, now))
    if approval:
        return ("pending",)
    return _issue_for_request(db, token_id, site, spki, now, signer)


# ---------------------------------------------------------------- sites and certificates


def record_renewal_sync(db: sqlite_utils.Database, site: str, spki: str, now: float,
                        signer: Signer) -> tuple[str, str, float]:
    return _record_certificate(db, site, spki, now, "renew", signer)


def is_revoked_sync(db: sqlite_utils.Database, site: str, serial: str) -> bool:
    cert = _row(db, "SELECT issued_at, revoked_at FROM site_certificates WHERE serial = ?",
                (serial,))
    if cert is not None and cert["revoked_at"] is not None:
        return True
    revoked = _row(db, "SELECT revoked_at FROM revoked_sites WHERE site = ?", (site,))
    if revoked is None:
        return False
    # A site revoked and later enrolled again: only certificates issued since count.
    return cert is None or cert["issued_at"] <= revoked["revoked_at"]


def revoke_site_sync(db: sqlite_utils.Database, site: str, now: float) -> dict[str, int]:
    certs = db.execute("UPDATE site_certificates SET revoked_at = ? "
                       "WHERE site = ? AND revoked_at IS NULL", (now, site)).rowcount
    tokens = db.execute("UPDATE enroll_tokens SET revoked_at = ? WHERE site = ? "
                        "AND used_at IS NULL AND revoked_at IS NULL", (now, site)).rowcount
    pending = db.execute("UPDATE enroll_requests SET status = 'rejected', decided_at = ? "
                         "WHERE site = ? AND status IN ('pending', 'approved')",
                         (now, site)).rowcount
    db.execute("INSERT INTO revoked_sites (site, revoked_at) VALUES (?, ?) "
               "ON CONFLICT (site) DO UPDATE SET revoked_at = excluded.revoked_at", (site, now))
    return {"certificates": int(certs), "tokens": int(tokens), "requests": int(pending)}


def approve_site_sync(db: sqlite_utils.Database, site: str, now: float) -> int:
    return int(db.execute("UPDATE enroll_requests SET status = 'approved', decided_at = ? "
                          "WHERE site = ? AND status = 'pending'", (now, site)).rowcount)


def list_sites_sync(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    sites: dict[str, dict[str, Any]] = {}
    for row in db.execute("SELECT site, serial, issued_at, not_after, how, revoked_at "
                          "FROM site_certificates ORDER BY issued_at").fetchall():
        entry = sites.setdefault(row["site"], {"site": row["site"], "certificates": []})
        entry["certificates"].append({k: row[k] for k in ("serial", "issued_at", "not_after",
                                                          "how", "revoked_at")})
    for row in db.execute("SELECT site, status, requested_at FROM enroll_requests "
                          "WHERE status IN ('pending', 'approved')").fetchall():
        entry = sites.setdefault(row["site"], {"site": row["site"], "certificates": []})
        entry["request"] = {"status": row["status"], "requested_at": row["requested_at"]}
    for row in db.execute("SELECT site, revoked_at FROM revoked_sites").fetchall():
        entry = sites.setdefault(row["site"], {"site": row["site"], "certificates": []})
        entry["revoked_at"] = row["revoked_at"]
    return [sites[k] for k in sorted(sites)]


# ---------------------------------------------------------------- running them


class EnrollStore:
    """The primary's enrollment tables, one committed transaction per call."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def token_site(self, token_id: str, secret_sha256: str) -> str | None:
        return await self.database.run(lambda db: token_site_sync(db, token_id, secret_sha256))

    async def redeem(self, token_id: str, secret_sha256: str, spki: str, now: float,
                     approval: bool, signer: Signer) -> tuple[str, ...]:
        return await self.database.run(
            lambda db: redeem_sync(db, token_id, secret_sha256, spki, now, approval, signer))

    async def record_renewal(self, site: str, spki: str, now: float,
                             signer: Signer) -> tuple[str, str, float]:
        return await self.database.run(lambda db: record_renewal_sync(db, site, spki, now,
                                                                      signer))

    async def is_revoked(self, site: str, serial: str) -> bool:
        return await self.database.run(lambda db: is_revoked_sync(db, site, serial))


def transaction(path: Path, work: Callable[[sqlite_utils.Database], T]) -> T:
    """Run `work` in one transaction on the database at `path` (migrated, with the
    enrollment tables), outside any reactor: for the command line next to a running
    primary (SQLite WAL: the two write in turn)."""
    migrate(path)
    conn = connect(path)
    try:
        db = sqlite_utils.Database(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            ensure_schema_sync(db)
            result = work(db)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
    finally:
        conn.close()

