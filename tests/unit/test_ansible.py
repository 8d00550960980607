"""The Ansible roles: ansible-lint's production profile, a syntax check of the playbook,
and the configuration templates rendered for every host of the example inventory
and read by the daemon's own configuration parser.

Running the playbook against booted VMs (changed=0 on a second run) is the image
tests' later step; these run offline in a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from appliance.config import parse

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
ROLES = ("outpost_common", "outpost_site", "outpost_primary")

# ansible-core and ansible-lint come from `make setup`: a missing one fails, never skips.


def run(*command: str, cwd: Path = ANSIBLE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "ANSIBLE_LOCAL_TEMP": "/tmp"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_ansible_lint_production_profile() -> None:
    done = run("ansible-lint", "--offline", "--profile", "production", "--nocolor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed" in done.stdout + done.stderr


def test_playbook_syntax() -> None:
    done = run("ansible-playbook", "--syntax-check", "site.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_galaxy_layout(role: str) -> None:
    import yaml

    root = ANSIBLE / "roles" / role
    for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "meta/argument_specs.yml"):
        assert (root / part).is_file(), part
    defaults = yaml.safe_load((root / "defaults/main.yml").read_text()) or {}
    specs = yaml.safe_load((root / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert all(name.startswith(role + "_") for name in defaults), "unprefixed variable"
    assert set(defaults) == set(options), "defaults and argument_specs disagree"


def render(template: Path, host: str, defaults: Path, dest: Path) -> str:
    """The template as the role renders it: role defaults under the host's inventory vars."""
    import json

    import yaml

    inventory = run("ansible-inventory", "--host", host)
    assert inventory.returncode == 0, inventory.stderr
    variables = {**yaml.safe_load(defaults.read_text()), **json.loads(inventory.stdout)}
    variables.pop("ansible_host", None)
    (dest.parent / "vars.json").write_text(json.dumps(variables))
    done = run("ansible", host, "-c", "local", "-e", f"@{dest.parent / 'vars.json'}",
               "-e", f"ansible_python_interpreter={shutil.which('python3')}",
               "-m", "ansible.builtin.template", "-a", f"src={template} dest={dest}")
    assert done.returncode == 0, done.stdout + done.stderr
    return dest.read_text()


@pytest.mark.parametrize("host", ["branch-1", "branch-2", "branch-3"])
def test_site_template_is_a_valid_configuration(host: str, tmp_path: Path) -> None:
    role = ANSIBLE / "roles/outpost_site"
    text = render(role / "templates/site.toml.j2", host, role / "defaults/main.yml",
                  tmp_path / "site.toml")
    config = parse(tomllib.loads(text))
    assert (config.role, config.name, config.ipp.port, config.lpd.port) == ("site", host, 631, 515)
    if host == "branch-3":
        assert [(d.name, d.protocol) for d in config.devices] == [("old-laser", "lpd")]


def test_primary_template_is_a_valid_configuration(tmp_path: Path) -> None:
    role = ANSIBLE / "roles/outpost_primary"
    text = render(role / "templates/primary.toml.j2", "primary", role / "defaults/main.yml",
                  tmp_path / "primary.toml")
    config = parse(tomllib.loads(text))
    assert config.role == "primary" and config.sync is not None and config.sync.port == 8633
