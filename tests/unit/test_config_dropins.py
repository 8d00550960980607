"""`<config>.d/*.toml` drop-ins merged into the configuration by appliance.config.load."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, load
from appliance.config_dropins import merge

SITE = """role = "site"
name = "branch-7"
[ipp]
host = "0.0.0.0"
port = 631
[[devices]]
name = "mfd-1"
uri = "ipp://10.0.0.1/ipp/print"
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE)
    return path


def test_without_dropins_nothing_changes(site: Path) -> None:
    config = load(site)
    assert (config.ipp.port, [d.name for d in config.devices]) == (631, ["mfd-1"])


def test_dropins_merge_in_name_order_and_append_devices(site: Path) -> None:
    folder = site.with_name("site.toml.d")
    folder.mkdir()
    (folder / "50-port.toml").write_text("[ipp]\nport = 8631\n")
    (folder / "10-port.toml").write_text("[ipp]\nport = 9999\n")
    (folder / "60-devices.toml").write_text(
        '[[devices]]\nname = "mfd-2"\nuri = "ipp://10.0.0.2/ipp/print"\n')
    (folder / "README").write_text("not a drop-in")
    config = load(site)
    assert config.ipp.host == "0.0.0.0"            # kept from the main file
    assert config.ipp.port == 8631                 # 50- after 10-
    assert [d.name for d in config.devices] == ["mfd-1", "mfd-2"]


def test_a_broken_dropin_is_named(site: Path) -> None:
    folder = site.with_name("site.toml.d")
    folder.mkdir()
    (folder / "20-bad.toml").write_text("[ipp\n")
    with pytest.raises(ConfigError, match=r"20-bad\.toml: not valid TOML"):
        load(site)


def test_a_dropin_mistake_is_reported_like_the_main_files(site: Path) -> None:
    folder = site.with_name("site.toml.d")
    folder.mkdir()
    (folder / "30.toml").write_text("[ipp]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"ipp\.prot: unknown setting"):
        load(site)


def test_merge_rules() -> None:
    assert merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"c": 3}, "l": [2]}) == \
        {"a": {"b": 1, "c": 3}, "l": [2]}          # plain arrays are replaced
