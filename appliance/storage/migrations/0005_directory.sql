-- Outpost schema, version 5: users that come from the organisation's directory (primary).
--
-- `users.directory_id` is the entry's stable id (entryUUID, or objectGUID on Active
-- Directory): a rename in the directory updates the same user, so her account, ledger
-- and balance stay hers. NULL: a user made here (`outpost users import`).
ALTER TABLE users ADD COLUMN directory_id TEXT;
CREATE UNIQUE INDEX users_directory_id ON users(directory_id) WHERE directory_id IS NOT NULL;

-- What the last directory sync saw of each entry (JSON; a card number only as its HMAC),
-- so that the next run can tell created, changed, renamed and deleted entries apart.
CREATE TABLE directory_entries (
    stable_id   TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    seen_at     REAL NOT NULL
);

-- Each directory user's groups, nested groups resolved (primary only; not synced yet).
CREATE TABLE directory_groups (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    PRIMARY KEY (user_id, name)
);
