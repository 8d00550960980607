"""The Vagrant lab's Vagrantfile: `vagrant validate` with the libvirt provider plugin.

Runs in `make test-image` (scripts/setup-image.sh installs vagrant and vagrant-libvirt
from Debian). `vagrant up` needs the box from our own image (`make box`, not yet).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.image


def test_vagrantfile_validates() -> None:
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is missing: run scripts/setup-image.sh (make test-image does)")
    done = subprocess.run(["vagrant", "validate"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                                            "VAGRANT_DEFAULT_PROVIDER": "libvirt"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout


def test_machine_table_comes_from_the_inventory() -> None:
    done = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    names = {line.split(",")[1] for line in done.stdout.splitlines()
             if ",state," in line}
    assert names == {"primary", "branch-1", "branch-2", "branch-3"}, done.stdout + done.stderr
