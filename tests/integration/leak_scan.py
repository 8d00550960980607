"""Looking for secrets in files: every encoding a careless line of code could have used.

`forms(secret)` gives the byte strings to look for: the secret itself (UTF-8),
hexadecimal (lower and upper case), base64 (standard and URL-safe, at each of the
three byte alignments it could have inside a longer encoded blob), and UTF-16 LE
and BE. `scan(folder, secrets)` reads every file below `folder` and reports
(file, secret name, form) for each hit.

A short secret (a 4-digit PIN) cannot be looked for as plain digits: "2026" is
in every log line's date. For secrets shorter than `MIN_PLAIN` bytes the plain
form (and the alignment-shifted base64 fragments, too short to mean anything) are
left out; every other form is still looked for, and tests use long PINs beside
the short ones so that the plain form of a PIN is checked too.
"""

from __future__ import annotations

import base64
from pathlib import Path

MIN_PLAIN = 6


def _base64_fragments(secret: bytes) -> list[bytes]:
    """The base64 characters fully determined by `secret` at byte offsets 0, 1 and 2."""
    out = []
    n = len(secret)
    for k in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\x00" * k + secret + b"\x00" * 2)
            first = -(-8 * k // 6)           # ceil(8k / 6)
            last = (8 * (k + n)) // 6        # exclusive
            fragment = text[first:last]
            if k == 0 or n >= MIN_PLAIN:
                out.append(fragment)
    return out


def forms(secret: str) -> dict[str, bytes]:
    raw = secret.encode("utf-8")
    found: dict[str, bytes] = {}
    if len(raw) >= MIN_PLAIN:
        found["plain"] = raw
    found["hex"] = raw.hex().encode()
    found["HEX"] = raw.hex().upper().encode()
    for i, fragment in enumerate(_base64_fragments(raw)):
        if len(fragment) >= 4:
            found[f"base64#{i}"] = fragment
    found["utf-16-le"] = secret.encode("utf-16-le")
    found["utf-16-be"] = secret.encode("utf-16-be")
    return found


def files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def scan(folder: Path, secrets: dict[str, str]) -> list[tuple[str, str, str]]:
    """(file, secret name, form) for every secret found in any form in any file."""
    patterns = [(name, form, needle) for name, secret in secrets.items()
                for form, needle in forms(secret).items()]
    hits = []
    for path in files_below(folder):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        lowered = data.lower()
        for name, form, needle in patterns:
            haystack = lowered if form in ("hex", "HEX") else data
            if (needle.lower() if form in ("hex", "HEX") else needle) in haystack:
                hits.append((str(path.relative_to(folder)), name, form))
    return hits
