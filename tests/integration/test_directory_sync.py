"""Directory sync against a real slapd whose `sizelimit` is 500: 1,000 users and their
(nested) groups read with paged searches, then a modify, a rename and a delete planned by
stable id (entryUUID). Applying the plan at the primary and carrying it to sites is the
primary's sync (issue 5)."""

from __future__ import annotations

import time

import pytest
from twisted.internet import reactor

from appliance.core.directory_sync import plan
from appliance.protocols.ldap.client import LdapSettings
from appliance.protocols.ldap.sync import DirectoryReader, SyncMapping

from .slapd import HAVE_SLAPD, PEOPLE, READER_DN, READER_PW, SUFFIX, Person, Slapd

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not HAVE_SLAPD, reason="slapd is not installed")]

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
