"""Configuration drop-ins: `<file>.d/*.toml` beside the main file, merged in name order.

An installer or a provisioning tool adds `/etc/outpost/site.toml.d/50-devices.toml`
instead of editing the file the seed or Ansible wrote, as with systemd's own drop-ins.
Tables merge key by key, a later file's scalar or inline value replaces an earlier
one, and arrays of tables (`[[devices]]`) are appended, so that a drop-in can add a
device. The merged document goes through the same parser, so a mistake in a drop-in
is reported like one in the main file (plus the drop-in's name for TOML syntax errors).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def dropin_dir(path: Path) -> Path:
    return path.with_name(path.name + ".d")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge(old, value)
        elif (isinstance(old, list) and isinstance(value, list)
              and all(isinstance(v, dict) for v in old + value)):
            merged[key] = old + value
        else:
            merged[key] = value
    return merged


def read_dropins(path: Path, root: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`root` with every drop-in of `path` merged in, and the errors of unreadable ones."""
    errors: list[str] = []
    folder = dropin_dir(path)
    if not folder.is_dir():
        return root, errors
    for dropin in sorted(folder.glob("*.toml")):
        try:
            with open(dropin, "rb") as f:
                root = merge(root, tomllib.load(f))
        except tomllib.TOMLDecodeError as exc:
            errors.append(f"{dropin}: not valid TOML: {exc}")
        except OSError as exc:
            errors.append(f"{dropin}: {exc.strerror}")
    return root, errors
