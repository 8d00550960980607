"""Configuration of roles and sync: [primary] for a site, [sync] for the primary, every
mistake reported at once with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, parse


def base(tmp_path, **extra):
    return {"name": "branch", "state_dir": str(tmp_path / "state"),
            "secrets_dir": str(tmp_path / "secrets"), **extra}


LINK = {"url": "https://primary.example:8633", "ca_file": "/etc/outpost/ca.crt",
        "cert_file": "/etc/outpost/site.crt", "key_file": "/etc/outpost/site.key"}


def test_a_site_without_a_primary_has_no_uplink(tmp_path):
    config = parse(base(tmp_path))
    assert config.role == "site" and config.primary is None and config.sync is None


def test_a_site_with_a_primary(tmp_path):
    config = parse(base(tmp_path, primary={**LINK, "heartbeat_interval": 2,
                                           "offline_after_misses": 4,
                                           "online_after_successes": 6,
                                           "push_batch_size": 200}))
    link = config.primary
    assert link is not None
    assert link.url == LINK["url"] and link.ca_file == Path("/etc/outpost/ca.crt")
    assert (link.heartbeat_interval, link.offline_after_misses, link.online_after_successes,
            link.push_batch_size, link.pull_batch_size) == (2.0, 4, 6, 200, 1000)


def test_relative_certificate_paths_follow_the_base_dir(tmp_path):
    config = parse(base(tmp_path, primary={**LINK, "ca_file": "pki/ca.crt"}),
                   base_dir=tmp_path)
    assert config.primary is not None and config.primary.ca_file == tmp_path / "pki/ca.crt"


def test_a_primary_needs_its_sync_listener(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(base(tmp_path, role="primary"))
    assert any(e.startswith("sync: required") for e in caught.value.errors)
    config = parse(base(tmp_path, role="primary", sync={
        "port": 9443, "ca_file": "a", "cert_file": "b", "key_file": "c"}))
    assert config.sync is not None and config.sync.port == 9443
    assert config.sync.host == "127.0.0.1"


def test_every_sync_mistake_is_reported_at_once_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(base(tmp_path, role="site",
                   primary={"url": "http://primary", "heartbeat_interval": 0,
                            "offline_after_misses": "3", "push_batch_size": 10_000,
                            "colour": True},
                   sync={"port": 70000}))
    errors = caught.value.errors
    for expected in ("primary.url: expected https://host:port", "primary.ca_file: required",
                     "primary.cert_file: required", "primary.key_file: required",
                     "primary.heartbeat_interval: must be positive",
                     "primary.offline_after_misses: expected int",
                     "primary.push_batch_size: at most 5000",
                     "primary.colour: unknown setting",
                     "sync.ca_file: required", "sync.port: must be 0..65535"):
        assert any(e.startswith(expected) for e in errors), (expected, errors)


def test_roles_other_than_site_primary_and_provider_are_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(base(tmp_path, role="printer"))
    assert caught.value.errors[0].startswith("role: 'printer' is not supported")
    with pytest.raises(ConfigError) as caught:
        parse(base(tmp_path, role="primary", primary=LINK,
                   sync={"ca_file": "a", "cert_file": "b", "key_file": "c"}))
    assert any(e.startswith("primary: only a site has a primary") for e in caught.value.errors)


def test_a_name_with_a_slash_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse({**base(tmp_path), "name": "branch/1"})
    assert caught.value.errors[0].startswith("name: a non-empty name without '/'")
