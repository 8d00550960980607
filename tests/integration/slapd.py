"""A private slapd for tests: its own folder, loopback ports, a CA the test makes.

`Slapd(folder).start(users=...)` writes a slapd.conf (core, cosine, inetorgperson
and nis schemas, back_mdb, a size limit of 500 for unpaged searches, a rootdn), starts
`slapd -f conf -h "ldap://127.0.0.1:P/ ldaps://127.0.0.1:Q/" -d 0`, waits for the
ports, loads the people with `ldapadd`, and `stop()` ends it (the process it
started, by its pid). The server certificate is issued by a CA made here for
the names given (by default `localhost` only, so that `ldaps://127.0.0.1`
is a name mismatch while `ldaps://localhost` verifies).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SUFFIX = "dc=outpost,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret-not-for-users"
PEOPLE = f"ou=people,{SUFFIX}"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "reader-Pa55-for-searches"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")

HAVE_SLAPD = shutil.which("slapd") is not None or Path("/usr/sbin/slapd").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class TestCa:
    """A CA made by the test, issuing server certificates for chosen names."""

    folder: Path
    name: str = "Outpost Test CA"

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = self.folder / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, names: list[str]) -> tuple[Path, Path]:
        """(cert file, key file) for a server known by `names` (DNS names or IP addresses)."""
        key = _key()
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(alt), False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               False)
                .sign(self.key, hashes.SHA256()))
        cert_file, key_file = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return cert_file, key_file


@dataclass
class Person:
    uid: str
    password: str
    cn: str | None = None      # the RDN value (defaults to the uid)
    sn: str = "Tester"

    @property
    def rdn_value(self) -> str:
        return self.cn or self.uid


def escape_rdn_value(value: str) -> str:
    """RFC 4514 escaping for an attribute value in a DN (for writing test LDIF)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def person_dn(person: Person) -> str:
    return f"cn={escape_rdn_value(person.rdn_value)},{PEOPLE}"


def ldif_for(people: list[Person]) -> str:
    import base64

    def line(attribute: str, value: str) -> str:
        if value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<")):
            return f"{attribute}: {value}"
        return f"{attribute}:: {base64.b64encode(value.encode()).decode()}"

    blocks = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: outpost\no: Outpost",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: reader\nuserPassword: {READER_PW}",
    ]
    for p in people:
        blocks.append("\n".join([
            line("dn", person_dn(p)), "objectClass: inetOrgPerson", line("cn", p.rdn_value),
            line("sn", p.sn), line("uid", p.uid), line("userPassword", p.password)]))
    return "\n\n".join(blocks) + "\n"


@dataclass
class Slapd:
    folder: Path
    cert_names: list[str] = field(default_factory=lambda: ["localhost"])
    ldap_port: int = 0
    ldaps_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self, people: list[Person], timeout: float = 20.0) -> Slapd:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca = TestCa(self.folder / "pki")
        cert, key = self.ca.issue("slapd", self.cert_names)
        db = self.folder / "db"
        db.mkdir(exist_ok=True)
        self.ldap_port, self.ldaps_port = free_port(), free_port()
        conf = self.folder / "slapd.conf"
        conf.write_text("\n".join([
            *(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS),
            f"pidfile {self.folder / 'slapd.pid'}",
            f"argsfile {self.folder / 'slapd.args'}",
            "modulepath /usr/lib/ldap",
            "moduleload back_mdb",
            # An unpaged search stops at 500 entries. A bare `sizelimit 500` would also cap
            # paged searches in total (size.prtotal defaults to the hard limit), which no
            # sync could get through; directories in the field page without a total cap.
            "sizelimit size.soft=500 size.hard=500 size.prtotal=unlimited",
            f"TLSCACertificateFile {self.ca.ca_file}",
            f"TLSCertificateFile {cert}",
            f"TLSCertificateKeyFile {key}",
            "database mdb",
            "maxsize 104857600",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ROOT_DN}"',
            f"rootpw {ROOT_PW}",
            f"directory {db}",
            "index objectClass eq",
            "index uid eq",
            "access to attrs=userPassword by self read by anonymous auth by * none",
            "access to * by * read",
            "",
        ]))
        self.log = open(self.folder / "slapd.log", "ab")
        self.process = subprocess.Popen(
            ["/usr/sbin/slapd", "-f", str(conf), "-h",
             f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/",
             "-d", "0"], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not all(_open(p) for p in (self.ldap_port, self.ldaps_port)):
            if self.process.poll() is not None:
                raise RuntimeError("slapd exited: " + (self.folder / "slapd.log").read_text())
            if time.monotonic() > deadline:
                raise TimeoutError("slapd did not open its ports")
            time.sleep(0.05)
        self.add(ldif_for(people))
        return self

    def add(self, ldif: str) -> None:
        out = subprocess.run(["ldapadd", "-x", "-H", self.ldap_url, "-D", ROOT_DN, "-w", ROOT_PW],
                             input=ldif.encode(), capture_output=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"ldapadd failed: {out.stderr.decode()}")

    def modify(self, ldif: str) -> None:
        out = subprocess.run(["ldapmodify", "-x", "-H", self.ldap_url, "-D", ROOT_DN, "-w",
                              ROOT_PW], input=ldif.encode(), capture_output=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"ldapmodify failed: {out.stderr.decode()}")

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def ldaps_url(self, host: str = "localhost") -> str:
        return f"ldaps://{host}:{self.ldaps_port}"

    def pause(self) -> None:
        """Stop answering (SIGSTOP): connections are accepted by the kernel, nothing replies."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
