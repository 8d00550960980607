"""SQL for credentials the site itself writes: directory password caches and cards linked at a panel.

Beside `store.py` (which reads credentials for logins); same rules: one committed
transaction per call, in the database thread. Only verifiers and HMACs are stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlite_utils

from appliance.core.model import User

from .database import Database
from .store import _one, _user


@dataclass(frozen=True)
class CachedPassword:
    user: User
    verifier: str | None
    #: When the directory last accepted this password (None: not a directory cache).
    verified_at: float | None


class CredentialStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def cached_password(self, username: str) -> CachedPassword | None:
        """The user and her password verifier with its age: one indexed lookup each."""

        def work(db: sqlite_utils.Database) -> CachedPassword | None:
            row = _one(db, "SELECT * FROM users WHERE username = ?", (username,))
            if row is None:
                return None
            secret = _one(db, "SELECT verifier, verified_at FROM identities "
                              "WHERE user_id = ? AND kind = 'password'", (row["id"],))
            if secret is None:
                return CachedPassword(_user(row), None, None)
            return CachedPassword(_user(row), secret["verifier"], secret["verified_at"])

        return await self.database.run(work)

    async def remember_password(self, user_id: int, verifier: str, verified_at: float) -> None:
        """Replace the user's password verifier by one the directory just confirmed."""

        def work(db: sqlite_utils.Database) -> None:
            db.conn.execute("DELETE FROM identities WHERE user_id = ? AND kind = 'password'",
                            (user_id,))
            db.conn.execute(
                "INSERT INTO identities (user_id, kind, lookup, verifier, created_at, "
                "verified_at) VALUES (?, 'password', NULL, ?, ?, ?)",
                (user_id, verifier, time.time(), verified_at))

        await self.database.run(work)

    async def link_card(self, user_id: int, lookup: str) -> str:
        """Give the user the card with HMAC `lookup`: 'linked', 'already' (hers), 'taken'."""

        def work(db: sqlite_utils.Database) -> str:
            row = _one(db, "SELECT user_id FROM identities WHERE kind = 'card' AND lookup = ?",
                       (lookup,))
            if row is not None:
                return "already" if row["user_id"] == user_id else "taken"
            db.conn.execute("INSERT INTO identities (user_id, kind, lookup, verifier, "
                            "created_at) VALUES (?, 'card', ?, NULL, ?)",
                            (user_id, lookup, time.time()))
            return "linked"

        return await self.database.run(work)
