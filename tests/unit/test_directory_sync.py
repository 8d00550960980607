"""Directory sync logic: AD's disabled flag, nested groups with cycles, plans by stable id."""

from appliance.core.directory_sync import (
    DirectoryGroup,
    DirectoryUser,
    ad_disabled,
    plan,
    resolve_groups,
)


def test_ad_disabled_flag():
    assert ad_disabled("514") and ad_disabled(2) and not ad_disabled("512")
    assert not ad_disabled(None) and not ad_disabled("garbage")


def test_nested_groups_and_cycles():
    users = [DirectoryUser("1", "CN=Ann,OU=P,DC=x", "ann"), DirectoryUser("2", "cn=bo,ou=p,dc=x", "bo")]
    groups = [DirectoryGroup("g1", "cn=a,dc=x", "a", frozenset({"cn=ann, ou=p, dc=x", "cn=b,dc=x"})),
              DirectoryGroup("g2", "cn=b,dc=x", "b", frozenset({"cn=bo,ou=p,dc=x", "cn=a,dc=x"})),
              DirectoryGroup("g3", "cn=c,dc=x", "c", frozenset({"cn=nobody,dc=x"}))]
    resolved = {u.username: u.groups for u in resolve_groups(users, groups)}
    assert resolved == {"ann": {"a", "b"}, "bo": {"a", "b"}}


def test_plan_by_stable_id():
    before = {"1": DirectoryUser("1", "cn=a", "ann"), "2": DirectoryUser("2", "cn=b", "bo"),
              "3": DirectoryUser("3", "cn=c", "cy")}
    now = [DirectoryUser("1", "cn=a2", "anna"), DirectoryUser("2", "cn=b", "bo", disabled=True),
           DirectoryUser("4", "cn=d", "di"), DirectoryUser("5", "cn=e", "DI")]
    result = plan(before, now)
    assert [(old, u.username) for old, u in result.renamed] == [("ann", "anna")]
    assert [u.username for u in result.updated] == ["bo"]
    assert [u.username for u in result.created] == ["di"]
    assert [u.username for u in result.deleted] == ["cy"]
    assert len(result.conflicts) == 1 and "DI" in result.conflicts[0]
    assert plan(before, list(before.values())).empty
    assert plan(before, [], complete=False).empty
