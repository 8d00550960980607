"""Fixtures of the in-process sync tests (`sync_helpers`): a primary node, a site node
("site-a") and a second site ("site-b") linked to it by loopback, each closed after the
test. A module that defines a fixture of the same name uses its own.

`sync_helpers` is imported inside the fixtures: importing it here, before pytest-twisted
installs its reactor, would install the default one."""

from __future__ import annotations

import pytest


@pytest.fixture
def primary(tmp_path):
    from tests.unit.sync_helpers import close, make_primary

    node = make_primary(tmp_path)
    yield node
    close(node)


@pytest.fixture
def site(tmp_path, primary):
    from tests.unit.sync_helpers import close, make_site

    node = make_site(tmp_path, primary)
    yield node
    close(node)


@pytest.fixture
def site_b(tmp_path, primary):
    from tests.unit.sync_helpers import close, make_site

    node = make_site(tmp_path, primary, "site-b")
    yield node
    close(node)
