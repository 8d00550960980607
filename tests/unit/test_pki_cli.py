"""`outpost pki init` and `outpost pki issue`: files, modes, identities, refusals."""

from __future__ import annotations

import json

from cryptography import x509

from appliance.cli import main
from appliance.pki import Identity, identity_of


def test_init_then_issue(tmp_path, capsys):
    assert main(["pki", "init", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["ca_file"] == str(tmp_path / "ca.crt")
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert main(["pki", "init", str(tmp_path)]) == 3, "never replaces the CA"
    capsys.readouterr()
    assert main(["pki", "issue", str(tmp_path), "--kind", "primary", "--name", "hq",
                 "--host", "127.0.0.1", "--host", "hq.example.org"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identity"] == "outpost://primary/hq"
    cert = x509.load_pem_x509_certificate((tmp_path / "hq.crt").read_bytes())
    assert identity_of(cert) == Identity("primary", "hq")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hq.example.org"]
    assert main(["pki", "issue", str(tmp_path), "--kind", "site", "--name", "a/b"]) == 2


def test_issue_without_a_ca(tmp_path, capsys):
    assert main(["pki", "issue", str(tmp_path), "--kind", "site", "--name", "x"]) == 2
    assert "outpost pki init" in capsys.readouterr().err
