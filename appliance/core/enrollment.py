"""Enrollment by join token, certificate renewal and revocation (docs/wire/enroll.md).

The primary is the deployment's certificate authority. An administrator makes a
one-time, expiring **join token** bound to a site name (`outpost token create`); the
primary keeps only its SHA-256. A new site fetches the CA certificate, checks it
against the **CA pin** it was given (SHA-256 of the CA's SubjectPublicKeyInfo DER),
and sends the token with a CSR made from a key that never leaves it; the primary
answers with a certificate for `outpost://site/<name>`. The site renews over mutual
TLS before its certificate expires; a revoked certificate (or every certificate of a
revoked site issued before the revocation) is refused on every sync request.

This module is the logic of both sides, free of I/O: `PrimaryEnrollment` (tokens,
approval, signing, revocation checks) works on `storage.enroll_store`; the
site-side helpers make keys and CSRs and decide when to renew; `Renewer` drives a
renewal over an injected transport.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.pki import Identity, Pair, identity_of

log = logging.getLogger(__name__)

TOKEN_ID_BYTES = 6        # 12 hex characters: the public half, to find the row
TOKEN_SECRET_BYTES = 32   # 256 random bits: the secret half, kept only as its SHA-256
MAX_CSR = 16 * 1024


class EnrollError(Exception):
    """A refused enrollment or renewal: `status` is the HTTP status, `code` the wire code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# ---------------------------------------------------------------- tokens and pins


@dataclass(frozen=True)
class NewToken:
    token_id: str
    secret: str

    @property
    def text(self) -> str:
        """What the administrator hands to the site: `<id>.<secret>`."""
        return f"{self.token_id}.{self.secret}"


def new_token() -> NewToken:
    return NewToken(secrets.token_hex(TOKEN_ID_BYTES), secrets.token_urlsafe(TOKEN_SECRET_BYTES))


def split_token(text: str) -> tuple[str, str]:
    """(id, secret) of a join token, or EnrollError."""
    token_id, sep, secret = text.strip().partition(".")
    if not sep or len(token_id) != 2 * TOKEN_ID_BYTES or not secret or len(secret) > 128:
        raise EnrollError(403, "bad_token", "not a join token of this primary")
    return token_id, secret


def secret_digest(secret: str) -> str:
    """What the primary stores of a token's secret. A plain SHA-256 suffices: the secret
    is 256 random bits, not something a person chose, so there is nothing to guess."""
    return hashlib.sha256(secret.encode()).hexdigest()


def ca_pin(cert_pem: bytes) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (DER), as kubeadm pins a CA.

    The public key, not the whole certificate: a CA re-issued with the same key (a new
    validity period) keeps its pin."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return "sha256:" + spki_digest(cert.public_key())


def spki_digest(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def pin_matches(pin: str, cert_pem: bytes) -> bool:
    expected = ca_pin(cert_pem)
    return hmac.compare_digest(pin.strip().lower().encode(), expected.encode())


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `24h`, `7d` or a number of seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    factor = units.get(text[-1:], 0)
    number = text[:-1] if factor else text
    try:
        value = float(number) * (factor or 1)
    except ValueError:
        raise ValueError(f"{text!r}: expected a duration such as 3600, 15m, 24h or 7d") from None
    if value < 0:
        raise ValueError(f"{text!r}: a duration may not be negative")
    return value


# ---------------------------------------------------------------- keys, CSRs, certificates


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def make_csr(key: Any, name: str) -> bytes:
    """A CSR for `outpost://site/<name>` signed by `key` (the site's, which stays there)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(Identity("site", name).uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CheckedCsr:
    name: str
    public_key: Any
    spki: str


def check_csr(pem: Any, site: str) -> CheckedCsr:
    """A CSR that is well formed, self-signed by its key, of an acceptable key type, and
    names `site` (its common name, and its SAN URI if it has one)."""
    if not isinstance(pem, str) or len(pem) > MAX_CSR:
        raise EnrollError(400, "malformed", "csr: a PEM certificate signing request is required")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise EnrollError(400, "malformed", "csr: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise EnrollError(400, "bad_csr", "csr: its signature does not verify")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise EnrollError(400, "bad_csr", "csr: EC keys on P-256 or P-384 only")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise EnrollError(400, "bad_csr", "csr: RSA keys of 2048 bits or more only")
    else:
        raise EnrollError(400, "bad_csr", "csr: an EC (P-256) or RSA key is required")
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [site]:
        raise EnrollError(403, "wrong_site",
                          f"csr: names {names!r}, but this token or certificate is for {site!r}")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if any(uri != Identity("site", site).uri for uri in uris):
        raise EnrollError(403, "wrong_site", f"csr: SAN {uris!r} is not outpost://site/{site}")
    return CheckedCsr(site, key, spki_digest(key))


def sign(ca: Pair, public_key: Any, name: str, lifetime: float, now: float) -> x509.Certificate:
    """A site certificate for `outpost://site/<name>` on `public_key`, valid for `lifetime`
    seconds from `now` (backdated by a tenth of that, at most 5 minutes, for clock skew)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    start = datetime.datetime.fromtimestamp(now, datetime.UTC)
    skew = datetime.timedelta(seconds=min(300.0, lifetime / 10))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site")]))
        .issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - skew)
        .not_valid_after(start + datetime.timedelta(seconds=lifetime))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(Identity("site", name).uri)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# ---------------------------------------------------------------- the primary


@dataclass
class PrimaryEnrollment:
    """The primary's side: join tokens, enrollment, approval, renewal, revocation.

    `store` is a `storage.enroll_store.EnrollStore` (each call one transaction);
    `ca` the deployment CA with its key; `card_key_hex` the deployment's card HMAC
    key, handed to an enrolled site so that its card lookups match the primary's.
    """

    store: Any
    ca: Pair
    sync_port: int
    approval: bool = False
    lifetime: float = 90 * 86400.0
    card_key_hex: str | None = None
    clock: Callable[[], float] = time.time

    def ca_answer(self) -> dict[str, Any]:
        return {"ca": self.ca.cert_pem.decode(), "pin": ca_pin(self.ca.cert_pem)}

    def _issued(self, cert_pem: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": "issued", "certificate": cert_pem,
                                  "ca": self.ca.cert_pem.decode(), "sync_port": self.sync_port}
        if self.card_key_hex:
            answer["card_key"] = self.card_key_hex
        return answer

    def _signer(self, public_key: Any, name: str) -> Callable[[float], tuple[str, str, float]]:
        def sign_now(now: float) -> tuple[str, str, float]:
            cert = sign(self.ca, public_key, name, self.lifetime, now)
            return serial_hex(cert.serial_number), pem(cert), \
                cert.not_valid_after_utc.timestamp()
        return sign_now

    async def enroll(self, payload: Any) -> tuple[int, dict[str, Any]]:
        """POST /enroll/v1/enroll: (200, issued) or (202, pending); EnrollError otherwise."""
        if not isinstance(payload, dict) or not isinstance(payload.get("token"), str):
            raise EnrollError(400, "malformed", "expected {\"token\": ..., \"csr\": ...}")
        token_id, secret = split_token(payload["token"])
        site = await self.store.token_site(token_id, secret_digest(secret))
        if site is None:
            raise EnrollError(403, "bad_token", "not a join token of this primary")
        csr = check_csr(payload.get("csr"), site)
        outcome = await self.store.redeem(
            token_id, secret_digest(secret), csr.spki, self.clock(), self.approval,
            self._signer(csr.public_key, site))
        kind = outcome[0]
        if kind == "issued":
            log.info("enrollment: issued a certificate for site %s (token %s)", site, token_id)
            return 200, self._issued(outcome[1])
        if kind == "pending":
            log.info("enrollment: site %s waits for approval (token %s)", site, token_id)
            return 202, {"status": "pending",
                         "message": f"waiting for `outpost site approve {site}` at the primary"}
        messages = {
            "used": (403, "token_used", "this join token was already used"),
            "expired": (403, "token_expired", "this join token has expired"),
            "revoked": (403, "token_revoked", "this join token was revoked"),
            "rejected": (403, "rejected", "the primary rejected this enrollment"),
            "unknown": (403, "bad_token", "not a join token of this primary"),
        }
        status, code, message = messages[kind]
        log.warning("enrollment refused for site %s (token %s): %s", site, token_id, code)
        raise EnrollError(status, code, message)

    async def refusal(self, peer: Identity) -> EnrollError | None:
        """Why a verified client certificate may not be used any more (revoked), or None."""
        if peer.kind != "site" or peer.serial is None:
            return None
        if await self.store.is_revoked(peer.name, serial_hex(peer.serial)):
            return EnrollError(403, "revoked", f"the certificate of {peer.uri} is revoked")
        return None

    async def renew(self, peer: Identity | None, payload: Any) -> dict[str, Any]:
        """POST /enroll/v1/renew over mutual TLS: a new certificate for the peer's own name."""
        if peer is None:
            raise EnrollError(401, "no_identity", "renewal needs the current client certificate")
        if peer.kind != "site":
            raise EnrollError(403, "not_a_site", f"{peer.uri} may not renew here")
        refused = await self.refusal(peer)
        if refused is not None:
            raise refused
        if not isinstance(payload, dict):
            raise EnrollError(400, "malformed", "expected {\"csr\": ...}")
        csr = check_csr(payload.get("csr"), peer.name)
        serial, cert_pem, _ = await self.store.record_renewal(
            peer.name, csr.spki, self.clock(), self._signer(csr.public_key, peer.name))
        log.info("renewal: site %s got certificate %s", peer.name, serial)
        return self._issued(cert_pem)


# ---------------------------------------------------------------- the site


def remaining_fraction(cert: x509.Certificate, now: float) -> float:
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return max(0.0, end - now) / max(1.0, end - start)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `path` atomically (a temporary file of `mode`, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def check_issued(cert_pem: str, ca_pem: bytes, name: str, public_key: Any) -> x509.Certificate:
    """The certificate the primary sent: signed by our CA, for our name and our key."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollError(502, "bad_certificate", f"not signed by the pinned CA: {exc}") from None
    if identity_of(cert) != Identity("site", name):
        raise EnrollError(502, "bad_certificate", f"the certificate is not for site {name}")
    if spki_digest(cert.public_key()) != spki_digest(public_key):
        raise EnrollError(502, "bad_certificate", "the certificate is not for our key")
    return cert


@dataclass
class Renewer:
    """Renews the site's certificate over mutual TLS when less than `fraction` of its
    lifetime is left, writes the new key and certificate, and calls `reload` so that new
    connections use them (open ones finish with the old; nothing restarts).

    `post(path, body_bytes) -> (status, body_bytes)` is the site's sync transport,
    which presents the current certificate.
    """

    name: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    post: Callable[[str, bytes], Awaitable[tuple[int, bytes]]]
    reload: Callable[[], None]
    fraction: float = 0.33
    clock: Callable[[], float] = time.time
    renewals: int = 0
    failures: int = 0

    def due(self) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("renewal: cannot read %s: %s", self.cert_file, exc)
            return False
        return remaining_fraction(cert, self.clock()) < self.fraction

    async def check(self) -> bool:
        """Renew if due; True when a new certificate is in place. Never raises."""
        if not self.due():
            return False
        try:
            await self._renew()
        except Exception as exc:  # the next check tries again; the current cert still works
            self.failures += 1
            log.error("renewal of %s's certificate failed: %s", self.name, exc)
            return False
        self.renewals += 1
        return True

    async def _renew(self) -> None:
        key = new_key()
        body = json.dumps({"csr": make_csr(key, self.name).decode()}).encode()
        status, payload = await self.post("/enroll/v1/renew", body)
        answer = json.loads(payload) if payload else {}
        if status != 200:
            raise EnrollError(status, str((answer.get("error") or {}).get("code", "refused")),
                              f"the primary answered {status}: {answer!r}")
        cert = check_issued(answer["certificate"], self.ca_file.read_bytes(), self.name,
                            key.public_key())
        # The key first: a crash between the two renames leaves a new key with the old
        # certificate; `recover_pending` at the next start finishes the pair.
        pending = self.cert_file.with_name(self.cert_file.name + ".new")
        write_public(pending, answer["certificate"].encode())
        write_private(self.key_file, key_pem(key))
        os.replace(pending, self.cert_file)
        log.info("renewal: site %s has certificate %x, valid until %s", self.name,
                 cert.serial_number, cert.not_valid_after_utc.isoformat())
        self.reload()


def recover_pending(cert_file: Path, key_file: Path) -> None:
    """Finish a renewal a crash interrupted: a `<cert>.new` that matches the key wins."""
    pending = cert_file.with_name(cert_file.name + ".new")
    if not pending.exists():
        return
    try:
        cert = x509.load_pem_x509_certificate(pending.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return
    try:
        if spki_digest(cert.public_key()) == spki_digest(key.public_key()):
            os.replace(pending, cert_file)
        else:
            pending.unlink()
    except OSError as exc:   # never keep the site from starting over this
        log.error("could not finish the interrupted renewal of %s: %s", cert_file, exc)


@dataclass(frozen=True)
class SiteFiles:
    """Where a site keeps what enrollment gives it (its `[primary]` paths)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    card_key_file: Path | None = None


def enrolled(name: str, files: SiteFiles, pin: str | None, now: float) -> bool:
    """Whether the files already hold a usable enrollment for `name` (and `pin`)."""
    try:
        ca_pem = files.ca_file.read_bytes()
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if pin is not None and not pin_matches(pin, ca_pem):
        return False
    try:
        check_issued(cert.public_bytes(serialization.Encoding.PEM).decode(), ca_pem, name,
                     key.public_key())
    except EnrollError:
        return False
    return cert.not_valid_after_utc.timestamp() > now


def enroll_site(name: str, url: str, token: str, pin: str, files: SiteFiles, *,
                fetch_ca: Callable[[str], bytes],
                post_enroll: Callable[[str, bytes, str, bytes], tuple[int, dict[str, Any]]],
                clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Enroll this site with the primary at `url` (its enrollment port).

    Idempotent and safe to retry: an enrollment already in place is kept; the key is
    written (0600) before the request and reused by a retry, which the primary answers
    with the same certificate (a lost answer costs nothing, not even the token). Raises
    EnrollError on a refusal or a CA that does not match `pin`; the network errors of
    the injected client mean "try again later".
    """
    if not pin.lower().startswith("sha256:"):
        raise EnrollError(400, "bad_pin", "the CA pin must look like sha256:<hex>")
    if enrolled(name, files, pin, clock()):
        return {"status": "enrolled", "changed": False}
    ca_pem = fetch_ca(url)
    if not pin_matches(pin, ca_pem):
        raise EnrollError(403, "pin_mismatch",
                          f"the primary's CA is {ca_pin(ca_pem)}, not the pinned {pin}: "
                          "refusing to trust it")
    key: Any = None
    try:
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        key = new_key()
        write_private(files.key_file, key_pem(key))
    status, answer = post_enroll(url, ca_pem, token, make_csr(key, name))
    if status == 202:
        return {"status": "pending", "changed": False,
                "message": str(answer.get("message", "waiting for approval"))}
    if status != 200:
        error = answer.get("error") or {}
        raise EnrollError(status, str(error.get("code", "refused")),
                          str(error.get("message", f"the primary answered {status}")))
    cert = check_issued(str(answer.get("certificate", "")), ca_pem, name, key.public_key())
    write_public(files.ca_file, ca_pem)
    write_public(files.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    result: dict[str, Any] = {"status": "enrolled", "changed": True,
                              "serial": serial_hex(cert.serial_number),
                              "not_after": cert.not_valid_after_utc.isoformat(),
                              "sync_port": answer.get("sync_port")}
    card_key = answer.get("card_key")
    if files.card_key_file is not None and isinstance(card_key, str):
        result["card_key"] = _install_card_key(files.card_key_file, card_key)
    return result


def _install_card_key(path: Path, hex_key: str) -> str:
    """Write the deployment's card HMAC key unless the site has one: a different one is
    reported, never replaced (it would orphan every card the site has stored)."""
    if path.exists():
        same = hmac.compare_digest(path.read_text().strip(), hex_key.strip())
        return "present" if same else "different"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, hex_key.strip().encode() + b"\n")
    return "written"
