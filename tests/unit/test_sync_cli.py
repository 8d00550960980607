"""`outpost sync status|outages|quarantine`: what an operator sees of replication, read from
databases that real sync code filled (a site that went offline, charged, came back and
merged; a forged event; a relay held for a provider the primary has not met), through the
command line's own entry point, as JSON and as text."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from appliance.cli import main
from appliance.core.mode import Mode
from appliance.pki import Identity
from tests.unit.sync_helpers import close, make_primary, make_site, push_raw
from tests.unit.test_provider import LEDGER_BODY
from tests.unit.test_sync_push import batch_of


def write_config(tmp: Path, role: str, name: str, state: Path) -> Path:
    """A configuration whose state_dir holds `state` as its database."""
    state_dir = tmp / f"{name}-state"
    state_dir.mkdir()
    (state_dir / "outpost.sqlite3").symlink_to(state)
    lines = [f'role = "{role}"', f'name = "{name}"', f'state_dir = "{state_dir}"',
             f'secrets_dir = "{tmp / (name + "-secrets")}"']
    if role == "primary":
        lines += ["[sync]", 'ca_file = "ca.crt"', 'cert_file = "hq.crt"', 'key_file = "hq.key"']
    path = tmp / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest_twisted.ensureDeferred
async def test_an_operator_sees_the_outage_the_merge_and_what_was_not_applied(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    site = make_site(tmp_path, primary, clock=clock)
    try:
        await site.sync.tick()
        assert site.mode.online
        site.transport.down = True
        for _ in range(3):
            clock.advance(5)
            await site.sync.tick()
        assert site.mode.state is Mode.OFFLINE
        site.charge(4)
        site_toml = write_config(tmp_path, "site", "site-a", site.database.path)
        offline = as_json(capsys, "sync", "status", "--config", str(site_toml))
        assert (offline["role"], offline["name"], offline["mode"]) == ("site", "site-a",
                                                                       "offline")
        assert offline["outbox"] >= 4 and offline["outbox_oldest_age"] is not None

        site.transport.down = False
        for _ in range(4):
            clock.advance(5)
            await site.sync.tick()
        assert site.mode.online
        back = as_json(capsys, "sync", "status", "--config", str(site_toml))
        assert back["mode"] == "online" and back["outbox"] == 0
        assert back["push_checkpoint"] >= offline["outbox"]

        # A forged body under an id already applied, and a relay for a provider never seen.
        site.charge(1, start=10)
        batch = batch_of(site)
        assert (await push_raw(primary, "site-a", batch))[0] == 200
        forged = copy.deepcopy(batch)
        forged["events"][-1]["body"]["amount"] = -1
        assert (await push_raw(primary, "site-a", forged))[0] == 200
        inner = "p-new/print:x:1"
        relay = {"seq": 10_000, "event_id": f"site-a/relay:{inner}", "kind": "relay",
                 "body": {"origin": "p-new", "event_id": inner, "kind": "ledger",
                          "body": LEDGER_BODY}}
        status, answer = await push_raw(primary, "site-a", {
            "site": "site-a", "batch_id": "relay-1", "events": [relay]},
            identity=Identity("site", "site-a"))
        assert status == 200 and answer["quarantined"][0]["reason"].startswith("held: ")

        hq = write_config(tmp_path, "primary", "hq", primary.database.path)
        outages = as_json(capsys, "sync", "outages", "--config", str(hq))
        assert len(outages) == 1
        (report,) = outages
        assert report["site"] == "site-a" and report["merged_at"] is not None
        assert report["events_merged"] >= 4 and report["ended_at"] > report["started_at"]
        assert as_json(capsys, "sync", "outages", "--config", str(hq), "--site", "x") == []

        everything = as_json(capsys, "sync", "quarantine", "--config", str(hq))
        assert [(e["event_id"], e["held"]) for e in everything] == [
            (batch["events"][-1]["event_id"], False), (inner, True)]
        assert "another body" in everything[0]["reason"]
        held = as_json(capsys, "sync", "quarantine", "--config", str(hq), "--held")
        assert [e["event_id"] for e in held] == [inner]
        assert "body" not in held[0], "bodies stay in the database (they name users)"
        not_held = as_json(capsys, "sync", "quarantine", "--config", str(hq), "--not-held")
        assert [e["held"] for e in not_held] == [False]

        hq_status = as_json(capsys, "sync", "status", "--config", str(hq))
        assert (hq_status["role"], hq_status["quarantined"], hq_status["held"]) == (
            "primary", 1, 1)
        assert [s["name"] for s in hq_status["sites"]] == ["site-a"]
        assert hq_status["sites"][0]["mode"] == "online"

        # The same as text, for a person.
        code, text, _ = run(capsys, "sync", "outages", "--config", str(hq))
        assert code == 0 and text.splitlines()[0].split()[:2] == ["site", "offline"]
        assert "site-a" in text.splitlines()[1]
        code, text, _ = run(capsys, "sync", "quarantine", "--config", str(hq))
        assert code == 0 and "held: " in text and "another body" in text
        code, text, _ = run(capsys, "sync", "status", "--config", str(site_toml))
        # (the charge pushed by hand above is still in its outbox: the site never saw an ack)
        assert code == 0 and "mode: online" in text and "outbox: 1 waiting" in text
        code, text, _ = run(capsys, "sync", "status", "--config", str(hq))
        assert code == 0 and "held relays: 1" in text and "site-a" in text
    finally:
        close(site, primary)


def test_outage_reports_are_asked_of_the_primary_and_of_a_started_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site_toml = tmp_path / "site.toml"
    site_toml.write_text(f'name = "b1"\nstate_dir = "{tmp_path / "s"}"\n'
                         f'secrets_dir = "{tmp_path / "k"}"\n')
    code, _, err = run(capsys, "sync", "outages", "--config", str(site_toml))
    assert code == 2 and "kept at the primary" in err
    code, _, err = run(capsys, "sync", "status", "--config", str(site_toml))
    assert code == 2 and "no database" in err and not (tmp_path / "s").exists(), \
        "a status query creates nothing"
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "primary"\nname = 7\n')
    code, _, err = run(capsys, "sync", "status", "--config", str(bad))
    assert code == 2 and "name" in err
