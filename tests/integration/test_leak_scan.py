"""Nothing a user typed or swiped can be read back from a site's disk.

A lab run with known card numbers, PINs and passwords (the lab's own users and two
added with long PINs, so that even a PIN's plain digits can be looked for): logins by
card, card + PIN, username + PIN and username + password, wrong passwords and PINs,
a card linked at the panel, a print and a release. Then every file under the site's
folder (state_dir: database, -wal, -shm, migration backups, spool, logs; and the
secrets folder) is scanned for every secret in plain, hex, base64 and UTF-16 form,
while the site runs and again after it stopped.

The second test does the same for a site with a directory (a real slapd): bind
logins, the cached verifier used offline, IPP Basic over ipps://.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from simulators.lab.runner import running_lab, wait_until
from simulators.lab.workstation import make_pdf, print_file
from simulators.mfd.panel import Panel

from .leak_scan import files_below, forms, scan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXTRA_USERS = [
    {"username": "leaky1", "full_name": "Leak One", "email": "l1@lab.outpost.test",
     "card": "7301558812", "pin": "48151623", "password": "Tr0ub4dor&3-leak-one",
     "balance": 5000},
    {"username": "leaky2", "full_name": "Leak Two", "email": "l2@lab.outpost.test",
     "card": "6620193347", "pin": "90210777", "password": "correct horse leak two",
     "balance": 5000},
]
WRONG = {"wrong-password": "Wrong-Guess-Pa55word!", "wrong-pin": "31415926"}
LINKED_CARD = "5544332211"


def test_forms_find_what_they_should():
    blob = b"x" + b"Tr0ub4dor".hex().encode() + b"y"
    assert forms("Tr0ub4dor")["hex"] in blob
    import base64

    for prefix in (b"", b"a", b"ab"):
        encoded = base64.b64encode(prefix + b"Tr0ub4dor&3" + b"tail")
        assert any(f in encoded for k, f in forms("Tr0ub4dor&3").items() if k.startswith("b"))
    assert "plain" not in forms("1234") and "hex" in forms("1234")
    assert forms("1234")["utf-16-le"] in "pin=1234".encode("utf-16-le")


def secrets_of(users: list[dict]) -> dict[str, str]:
    found = {}
    for user in users:
        for kind in ("card", "pin", "password"):
            if user.get(kind):
                found[f"{user['username']}.{kind}"] = str(user[kind])
    return found


def assert_clean(folder: Path, secrets: dict[str, str]) -> None:
    scanned = files_below(folder)
    names = {p.name for p in scanned}
    assert "outpost.sqlite3" in names, names
    hits = scan(folder, secrets)
    assert hits == [], f"secrets found on disk: {hits}"


def test_a_lab_run_leaves_no_secret_on_the_site_disk(tmp_path):
    docs = tmp_path / "docs"
    document = make_pdf(docs / "leak.pdf", 2)
    with running_lab(tmp_path / "lab", mfds=2, users=12) as lab:
        site_dir = Path(lab.site["state_dir"]).parent
        subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                        lab.site["config"], "-"], input=json.dumps(EXTRA_USERS).encode(),
                       check=True, capture_output=True)
        users = lab.endpoints["users"] + EXTRA_USERS
        api = lab.site["device_api"]
        for user in users:
            name = user["username"]
            for body in ({"card": user["card"]}, {"card": user["card"], "pin": user["pin"]},
                         {"username": name, "pin": user["pin"]},
                         {"username": name, "password": user["password"]}):
                panel = Panel(api, "mfd-1")
                answer = panel._login(body)
                assert answer["ok"], (name, body.keys(), answer)
                panel.logout()
        for user in ("leaky1", "alice"):
            panel = Panel(api, "mfd-2")
            assert not panel.login_password(user, WRONG["wrong-password"])["ok"]
            assert not panel.login_pin(user, WRONG["wrong-pin"])["ok"]
            assert not panel.login_card(WRONG["wrong-pin"] + "00")["ok"]
        # A card linked at the panel after a password login.
        panel = Panel(api, "mfd-1")
        assert panel.login_password("leaky2", EXTRA_USERS[1]["password"])["ok"]
        linked = panel._call("POST", "/cards", {"card": LINKED_CARD})
        assert linked["ok"] and linked["linked"], linked
        panel.logout()
        assert Panel(api, "mfd-2").login_card(LINKED_CARD)["user"]["username"] == "leaky2"
        # Print and release.
        for user in ("leaky1", "bob"):
            print_file(lab.site["ipp"], user, document)
        for user in ("leaky1", "bob"):
            u = next(x for x in users if x["username"] == user)
            panel = Panel(api, "mfd-2")
            assert panel.login_card(u["card"], u["pin"])["ok"]
            wait_until(lambda p=panel: (lambda j: j and all(x["analysed"] for x in j))(
                p.jobs()["jobs"]))
            assert panel.release("all")["ok"]
            panel.logout()
        secrets = {**secrets_of(users), **WRONG, "linked.card": LINKED_CARD}
        # Control: the lab keeps the plaintext users file beside the site, by design; the
        # scanner must find every long secret of the lab's users there.
        found = {name for _, name, _ in scan(lab.dir, secrets_of(lab.endpoints["users"]))}
        assert {n for n, v in secrets_of(lab.endpoints["users"]).items() if len(v) >= 6} <= found
        assert_clean(site_dir, secrets)
        state_files = {p.name for p in files_below(site_dir / "state")}
        assert any(n.endswith("-wal") for n in state_files), state_files
    assert_clean(site_dir, secrets)      # after the site stopped and checkpointed


@pytest_twisted.ensureDeferred
async def test_a_directory_site_leaves_no_secret_on_disk(tmp_path):
    from .directory_site import Api, ipp_print, off_reactor, start_site, write_config
    from .slapd import READER_PW, Person, Slapd

    passwords = {"alice": "Dir-Alice-Secret-551", "bob": "Dir-Bob-Secret-552"}
    slapd = Slapd(tmp_path / "slapd").start([Person(u, p) for u, p in passwords.items()])
    try:
        cert, key = slapd.ca.issue("ipp", ["localhost"])
        config = write_config(tmp_path / "site", slapd, ipp={
            "auth": "basic", "tls_cert_file": str(cert), "tls_key_file": str(key)})
        site = await start_site(config)
        try:
            port, ipp = site.ports_used["device_api"], site.ports_used["ipp"]
            for user, password in passwords.items():
                assert (await off_reactor(Api(port).login, username=user,
                                          password=password))[0] == 201
            assert (await off_reactor(Api(port).login, username="alice",
                                      password=WRONG["wrong-password"]))[0] == 401
            status, _, _ = await off_reactor(ipp_print, ipp, "findme", b"%!PS\nshowpage\n",
                                             basic=("bob", passwords["bob"]),
                                             tls_ca=slapd.ca.ca_file)
            assert status == 200
            from dataclasses import replace

            directory = site.auth.directory
            directory.settings = replace(directory.settings, url="ldap://127.0.0.1:1")
            assert (await off_reactor(Api(port).login, username="alice",
                                      password=passwords["alice"]))[0] == 201
        finally:
            await site.stop()
        secrets = {**{f"{u}.password": p for u, p in passwords.items()}, **WRONG,
                   "bind password": READER_PW}
        assert_clean(tmp_path / "site" / "state", secrets)
        # The bind password lives in its own 0600 file under secrets/, nowhere else.
        hits = scan(tmp_path / "site", {"bind password": READER_PW})
        assert {h[0] for h in hits} == {"secrets/ldap-bind.password"}, hits
    finally:
        slapd.stop()
