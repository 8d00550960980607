"""Directory sync against a real slapd whose `sizelimit` is 500: 1,000 users and their
(nested) groups read with paged searches, then a modify, a rename and a delete planned by
stable id (entryUUID). Applying the plan at the primary and carrying it to sites is the
primary's sync (issue 5)."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from appliance.core.directory_sync import plan
from appliance.protocols.ldap.client import LdapSettings
from appliance.protocols.ldap.sync import DirectoryReader, SyncMapping

from .slapd import PEOPLE, READER_DN, READER_PW, SUFFIX, Person, Slapd

pytestmark = [pytest.mark.integration]

USERS = 1000
GROUPS = f"ou=groups,{SUFFIX}"


def group_ldif(name: str, members: list[str]) -> str:
    lines = [f"dn: cn={name},{GROUPS}", "objectClass: groupOfNames", f"cn: {name}"]
    lines += [f"member: {m}" for m in members]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd-sync"))
    server.start([Person(f"user{i:04d}", f"pw-{i}") for i in range(USERS)])
    user = "cn=user{:04d}," + PEOPLE
    server.add("\n\n".join([
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
        group_ldif("sub", [user.format(11)]),
        group_ldif("eng", [user.format(i) for i in range(1, 11)] + [f"cn=sub,{GROUPS}"]),
        group_ldif("ops", [user.format(20)]),
        group_ldif("staff", [f"cn=eng,{GROUPS}", f"cn=ops,{GROUPS}"]),
        group_ldif("loop-a", [user.format(30), f"cn=loop-b,{GROUPS}"]),
        group_ldif("loop-b", [user.format(31), f"cn=loop-a,{GROUPS}"]),
    ]) + "\n")
    yield server
    server.stop()


def reader(slapd, **mapping) -> DirectoryReader:
    settings = LdapSettings(url=slapd.ldap_url, base_dn=SUFFIX, bind_dn=READER_DN,
                            bind_password=READER_PW, timeout=10)
    return DirectoryReader(settings, SyncMapping(**mapping), page_size=200, reactor=reactor)


def test_an_unpaged_search_stops_at_the_size_limit(slapd):
    import ldap3

    conn = ldap3.Connection(ldap3.Server(slapd.ldap_url), READER_DN, READER_PW, auto_bind=True)
    conn.search(PEOPLE, "(objectClass=inetOrgPerson)", attributes=["uid"])
    assert conn.result["description"] == "sizeLimitExceeded"
    assert len(conn.entries) <= 500
    conn.unbind()


def test_paged_sync_reads_every_user_with_nested_groups(slapd):
    users = reader(slapd).snapshot_blocking()
    assert len(users) == USERS
    assert len({u.stable_id for u in users}) == USERS
    by_name = {u.username: u for u in users}
    assert by_name["user0001"].groups == {"eng", "staff"}
    assert by_name["user0011"].groups == {"sub", "eng", "staff"}
    assert by_name["user0020"].groups == {"ops", "staff"}
    assert by_name["user0030"].groups == by_name["user0031"].groups == {"loop-a", "loop-b"}
    assert by_name["user0500"].groups == frozenset()


def test_modify_rename_delete_and_disable_are_planned_by_stable_id(slapd):
    sync = reader(slapd, disabled="employeeType")
    before = {u.stable_id: u for u in sync.snapshot_blocking()}
    time.sleep(1.1)   # modifyTimestamp has one-second resolution
    since = time.strftime("%Y%m%d%H%M%SZ", time.gmtime())
    slapd.modify("\n\n".join([
        f"dn: cn=user0005,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: five@example.org",
        f"dn: cn=user0006,{PEOPLE}\nchangetype: modrdn\nnewrdn: cn=renamed0006\ndeleteoldrdn: 1",
        f"dn: cn=renamed0006,{PEOPLE}\nchangetype: modify\nreplace: uid\nuid: renamed0006",
        f"dn: cn=user0007,{PEOPLE}\nchangetype: delete",
        f"dn: cn=user0008,{PEOPLE}\nchangetype: modify\nreplace: employeeType\n"
        "employeeType: disabled",
    ]) + "\n")
    after = sync.snapshot_blocking()
    result = plan(before, after)
    updated = {u.username: u for u in result.updated}
    assert set(updated) == {"user0005", "user0008"}
    assert updated["user0005"].email == "five@example.org" and updated["user0008"].disabled
    assert not updated["user0005"].disabled
    ((old, renamed),) = result.renamed
    assert (old, renamed.username) == ("user0006", "renamed0006")
    assert before[renamed.stable_id].username == "user0006", "the same person, by entryUUID"
    assert [u.username for u in result.deleted] == ["user0007"]
    assert not result.created and not result.conflicts
    # An incremental run sees only the changed entries; deletions come from the id listing.
    changed = {u.username for u in sync.read_users(since=since)}
    assert changed == {"user0005", "renamed0006", "user0008"}
    from appliance.core.directory_sync import deleted_ids

    assert [u.username for u in deleted_ids(before, sync.user_ids())] == ["user0007"]


# ---------------------------------------------------------------- at the primary, to a site

@pytest_twisted.ensureDeferred
async def test_primary_sync_reaches_a_site_and_a_rename_keeps_the_balance(tmp_path):
    """1,000 directory users into the primary; a modify, a rename and a delete reach a
    site through the change log after the next (incremental) run; the renamed user keeps
    her balance and her card."""
    import json

    from appliance.core.credentials import CardKey
    from appliance.roles.directory_sync import DirectorySyncRunner
    from appliance.storage.database import Database
    from appliance.storage.store import _insert_ledger, balance_sync
    from appliance.storage.sync_store import (
        Change,
        apply_changes_sync,
        changes_since_sync,
        declare_role_sync,
    )

    server = Slapd(tmp_path / "slapd")
    people = [Person(f"emp{i:04d}", f"pw-{i}") for i in range(USERS)]
    server.start(people)
    try:
        server.modify("\n\n".join(
            f"dn: cn=emp{i:04d},{PEOPLE}\nchangetype: modify\nadd: employeeNumber\n"
            f"employeeNumber: {4000000000 + i}" for i in range(5)) + "\n")
        key = CardKey(b"d" * 32)
        primary = Database(tmp_path / "primary.sqlite3", reactor)
        site = Database(tmp_path / "site.sqlite3", reactor)
        for database, role in ((primary, "primary"), (site, "site")):
            database.open()
            database.run_sync(lambda db, r=role: declare_role_sync(db, r, f"{r}-1"))
        settings = LdapSettings(url=server.ldap_url, base_dn=PEOPLE, bind_dn=READER_DN,
                                bind_password=READER_PW, timeout=10)
        runner = DirectorySyncRunner(
            DirectoryReader(settings, SyncMapping(disabled="employeeType"), reactor=reactor),
            primary, key.lookup)
        token = [0]

        def pull() -> None:
            changes, latest, _ = primary.run_sync(
                lambda db: changes_since_sync(db, token[0], 100000))
            site.run_sync(lambda db: apply_changes_sync(
                db, [Change(c.token, c.kind, c.key, json.loads(json.dumps(c.body)))
                     for c in changes], latest, "site-1"))
            token[0] = latest

        def site_user(name: str):
            return site.run_sync(lambda db: db.conn.execute(
                "SELECT u.*, (SELECT COALESCE(SUM(amount), 0) FROM ledger l "
                "WHERE l.account_id = u.account_id) AS balance FROM users u "
                "WHERE username = ?", (name,)).fetchone())

        first = await runner.run()
        assert first["created"] == USERS and not first["incremental"] and not first["conflicts"]
        # emp0003 gets money at the primary; it reaches the site with everything else.
        primary.run_sync(lambda db: _insert_ledger(
            db, "credit:emp0003", db.conn.execute(
                "SELECT account_id FROM users WHERE username = 'emp0003'").fetchone()[0],
            700, "credit", "admin", {}))
        pull()
        assert site_user("emp0003")["balance"] == 700
        assert site.run_sync(lambda db: db.conn.execute(
            "SELECT COUNT(*) FROM users").fetchone()[0]) == USERS
        card_owner = site.run_sync(lambda db: db.conn.execute(
            "SELECT u.username FROM identities i JOIN users u ON u.id = i.user_id "
            "WHERE i.kind = 'card' AND i.lookup = ?", (key.lookup("4000000003"),)).fetchone())
        assert card_owner[0] == "emp0003"

        server.modify("\n\n".join([
            f"dn: cn=emp0002,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: two@example.org",
            f"dn: cn=emp0003,{PEOPLE}\nchangetype: modrdn\nnewrdn: cn=maria\ndeleteoldrdn: 1",
            f"dn: cn=maria,{PEOPLE}\nchangetype: modify\nreplace: uid\nuid: maria",
            f"dn: cn=emp0004,{PEOPLE}\nchangetype: delete",
            f"dn: cn=emp0001,{PEOPLE}\nchangetype: modify\nreplace: employeeType\n"
            "employeeType: disabled",
        ]) + "\n")
        second = await runner.run()
        assert second["incremental"] and second["read"] == USERS - 1
        assert (second["updated"], second["renamed"], second["disabled"]) == (2, 1, 1), second
        pull()
        maria = site_user("maria")
        assert maria is not None and maria["balance"] == 700, "renamed, same account, same money"
        assert not maria["disabled"] and site_user("emp0003")["disabled"] == 1
        assert site_user("emp0002")["email"] == "two@example.org"
        assert site_user("emp0004")["disabled"] == 1 and site_user("emp0001")["disabled"] == 1
        card_owner = site.run_sync(lambda db: db.conn.execute(
            "SELECT u.username FROM identities i JOIN users u ON u.id = i.user_id "
            "WHERE i.kind = 'card' AND i.lookup = ?", (key.lookup("4000000003"),)).fetchone())
        assert card_owner[0] == "maria", "her card follows her"
        primary_balance = primary.run_sync(lambda db: balance_sync(db, db.conn.execute(
            "SELECT account_id FROM users WHERE username = 'maria'").fetchone()[0]))
        assert primary_balance == 700
        # Nothing the directory says is secret reached either disk in the clear.
        for path in (tmp_path / "primary.sqlite3", tmp_path / "site.sqlite3"):
            assert b"4000000003" not in path.read_bytes()
        primary.close()
        site.close()
    finally:
        server.stop()


def test_outpost_directory_sync_command(slapd, tmp_path):
    import json
    import subprocess
    import sys

    secret = tmp_path / "secrets" / "bind.password"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(READER_PW)
    secret.chmod(0o600)
    config = tmp_path / "primary.toml"
    config.write_text("\n".join([
        'role = "primary"', 'name = "hq"', f'state_dir = "{tmp_path / "state"}"',
        f'secrets_dir = "{tmp_path / "secrets"}"',
        "[sync]", f'ca_file = "{tmp_path}/ca.pem"', f'cert_file = "{tmp_path}/c.pem"',
        f'key_file = "{tmp_path}/k.pem"',
        "[directory]", f'url = "{slapd.ldap_url}"', f'base_dn = "{SUFFIX}"',
        f'bind_dn = "{READER_DN}"', f'bind_password_file = "{secret}"', ""]))

    def run(*extra: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "appliance.cli", "directory", "sync",
                              "--config", str(config), *extra], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert READER_PW not in out.stdout + out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()   # the module's directory (another test deleted a user from it)
    assert first["created"] == first["read"] >= USERS - 1 and not first["incremental"]
    again = run()
    assert again["incremental"] and again["created"] == again["updated"] == 0
    assert run("--full")["read"] == first["read"]
