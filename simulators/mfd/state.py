"""What a simulated MFD remembers across restarts: its page counters and job ids.

A real MFD's life counters never go backwards and never forget a page, and
the site reconciles charges against them; so the simulator keeps them in a
JSON file written atomically (temporary file, fsync, rename, fsync of the
folder). Job ids are kept there too, so that a restarted MFD never reuses an
id and never overwrites an earlier job's output file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

COUNTER_KEYS = ("total", "mono", "colour")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a crash leaves the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CounterStore:
    """Life counters (impressions: total, mono, colour) and the last job id."""

    FILE_NAME = "counters.json"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.FILE_NAME
        self.counters = dict.fromkeys(COUNTER_KEYS, 0)
        self.last_job_id = 0
        if self.path.exists():
            saved = json.loads(self.path.read_text("utf-8"))
            for key in COUNTER_KEYS:
                self.counters[key] = int(saved.get("counters", {}).get(key, 0))
            self.last_job_id = int(saved.get("last_job_id", 0))

    def add(self, impressions: int, colour: bool) -> None:
        self.counters["total"] += impressions
        self.counters["colour" if colour else "mono"] += impressions

    def next_job_id(self) -> int:
        self.last_job_id += 1
        self.save()
        return self.last_job_id

    def save(self) -> None:
        body: dict[str, Any] = {
            "version": 1,
            "counters": self.counters,
            "last_job_id": self.last_job_id,
        }
        write_atomically(self.path, json.dumps(body, indent=1).encode("utf-8") + b"\n")
