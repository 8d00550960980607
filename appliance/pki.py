"""The deployment's small PKI for sync over mutual TLS: a CA, certificates naming a
site (or the primary), and Twisted TLS options that require and check them.

A certificate's identity is its SAN URI `outpost://<kind>/<name>` (kind: `site`,
`primary`, later `provider`); the common name repeats the name for people reading
logs. The primary trusts only its CA and reads the peer's identity from the
verified certificate on every request, so a site cannot push in another's name.
`outpost pki` makes the CA and hand-made certificates; a primary with `[enroll]`
signs sites' certificates from their CSRs (`core/enrollment.py`, docs/wire/enroll.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCHEME = "outpost"
KINDS = ("site", "primary", "provider")


@dataclass(frozen=True)
class Identity:
    kind: str
    name: str
    #: The certificate's serial number, when the identity was read from one (revocation).
    serial: int | None = field(default=None, compare=False)

    @property
    def uri(self) -> str:
        return f"{SCHEME}://{self.kind}/{self.name}"


@dataclass(frozen=True)
class Pair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (0600) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(common_name: str = "Outpost deployment CA", days: int = 3650) -> Pair:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Pair, *, kind: str, name: str, hosts: Iterable[str] = (),
          days: int = 825) -> Pair:
    """A certificate for `outpost://<kind>/<name>`, usable as TLS client and server.

    `hosts` (DNS names or IP addresses) are added as SANs for a server (the primary's
    sync port) so that clients can check its name.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not name or "/" in name:
        raise ValueError("a name without '/' is required")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(Identity(kind, name).uri)]
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The `outpost://kind/name` identity a certificate carries, if exactly one."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = []
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        prefix = f"{SCHEME}://"
        if not uri.startswith(prefix):
            continue
        kind, _, name = uri[len(prefix):].partition("/")
        if kind in KINDS and name and "/" not in name:
            found.append(Identity(kind, name, cert.serial_number))
    return found[0] if len(found) == 1 else None


def peer_identity(transport: Any) -> Identity | None:
    """The verified peer certificate's identity on a TLS transport (None without one).

    Only meaningful with the options of `server_options`: OpenSSL has checked the
    chain to our CA before the first byte of the request arrived.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    peer = get()
    if peer is None:
        return None
    return identity_of(peer.to_cryptography())


# ---------------------------------------------------------------- Twisted TLS options


def _load(ca_file: Path, cert_file: Path, key_file: Path) -> tuple[Any, Any]:
    from twisted.internet import ssl

    ca = ssl.Certificate.loadPEM(Path(ca_file).read_bytes())
    own = ssl.PrivateCertificate.loadPEM(Path(cert_file).read_bytes()
                                         + b"\n" + Path(key_file).read_bytes())
    return ca, own


def server_options(ca_file: Path, cert_file: Path, key_file: Path) -> Any:
    """TLS server options that require a client certificate signed by our CA."""
    from twisted.internet import ssl

    ca, own = _load(ca_file, cert_file, key_file)
    return ssl.CertificateOptions(
        privateKey=own.privateKey.original, certificate=own.original,
        # A trust root makes OpenSSL require and verify the client certificate.
        trustRoot=ssl.trustRootFromCertificates([ca]),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def client_options(hostname: str, ca_file: Path, cert_file: Path, key_file: Path) -> Any:
    """Client TLS that checks the server against our CA (and its name) and presents ours."""
    from twisted.internet import ssl

    ca, own = _load(ca_file, cert_file, key_file)
    return ssl.optionsForClientTLS(hostname, trustRoot=ssl.trustRootFromCertificates([ca]),
                                   clientCertificate=own)
