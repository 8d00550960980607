-- Outpost schema, version 1: a single site with its users, ledger, devices and jobs.
-- Money is integer minor units everywhere. Balances are SUM(ledger.amount), never stored.

CREATE TABLE accounts (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('personal', 'shared', 'system')),
    -- How far below zero a charge may take the balance (0: not at all; NULL: no limit).
    overdraft_limit INTEGER DEFAULT 0,
    created_at      REAL NOT NULL
);

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    username    TEXT NOT NULL UNIQUE,
    full_name   TEXT NOT NULL DEFAULT '',
    email       TEXT NOT NULL DEFAULT '',
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL
);

-- One row per credential. Cards are found by `lookup` = HMAC-SHA256(deployment key, card)
-- (an indexed equality, never a scan); PINs and passwords keep an Argon2id `verifier`.
CREATE TABLE identities (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('card', 'pin', 'password')),
    lookup      TEXT,
    verifier    TEXT,
    created_at  REAL NOT NULL
);
CREATE UNIQUE INDEX identities_card_lookup ON identities(lookup) WHERE kind = 'card';
CREATE UNIQUE INDEX identities_user_secret ON identities(user_id, kind) WHERE kind IN ('pin', 'password');
CREATE INDEX identities_user ON identities(user_id, kind);

-- Append-only. `entry_id` is made where the charge happened and makes a retry harmless.
CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY,
    entry_id    TEXT NOT NULL UNIQUE,
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    amount      INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('charge', 'credit', 'refund', 'adjustment')),
    source      TEXT NOT NULL,          -- 'print', 'copy', 'scan', 'fax', 'admin', 'seed'
    job_id      INTEGER,
    device      TEXT,
    impressions INTEGER,
    colour      INTEGER,
    body        TEXT NOT NULL DEFAULT '{}',  -- what was reported, for idempotent replays
    created_at  REAL NOT NULL
);
CREATE INDEX ledger_account ON ledger(account_id, amount);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;

CREATE TABLE cost_policies (
    name        TEXT PRIMARY KEY,
    body        TEXT NOT NULL,          -- JSON, see appliance.core.charging.CostPolicy
    updated_at  REAL NOT NULL
);

CREATE TABLE devices (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL DEFAULT 'mfd',
    protocol      TEXT NOT NULL DEFAULT 'ipp',
    uri           TEXT NOT NULL,
    colour        INTEGER NOT NULL DEFAULT 1,
    duplex        INTEGER NOT NULL DEFAULT 1,
    cost_policy   TEXT NOT NULL DEFAULT 'default',
    enabled       INTEGER NOT NULL DEFAULT 1,
    updated_at    REAL NOT NULL
);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    uuid                TEXT NOT NULL UNIQUE,
    queue               TEXT NOT NULL,
    owner               TEXT NOT NULL,
    user_id             INTEGER REFERENCES users(id),
    name                TEXT NOT NULL DEFAULT '',
    document_format     TEXT NOT NULL DEFAULT 'application/octet-stream',
    spool_name          TEXT,           -- file under the spool folder; NULL once deleted
    size                INTEGER NOT NULL DEFAULT 0,
    pages               INTEGER,        -- NULL: not countable, charged from the MFD's impressions
    colour              INTEGER NOT NULL DEFAULT 0,
    analysed            INTEGER NOT NULL DEFAULT 0,
    copies              INTEGER NOT NULL DEFAULT 1,
    sides               TEXT NOT NULL DEFAULT 'one-sided',
    number_up           INTEGER NOT NULL DEFAULT 1,
    media               TEXT,
    colour_mode         TEXT,
    hold_until          TEXT,
    state               TEXT NOT NULL,  -- incoming, held, pending, processing, completed, canceled, aborted, expired
    state_reasons       TEXT NOT NULL DEFAULT '',
    state_message       TEXT NOT NULL DEFAULT '',
    device              TEXT,
    remote_job_uri      TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    impressions_completed INTEGER NOT NULL DEFAULT 0,
    charged             INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    processing_at       REAL,
    completed_at        REAL,
    expires_at          REAL
);
CREATE INDEX jobs_owner_state ON jobs(owner, state);
CREATE INDEX jobs_state ON jobs(state);

-- Copy, scan and fax usage reported by devices; `usage_id` is the device's own id.
CREATE TABLE usage (
    id          INTEGER PRIMARY KEY,
    usage_id    TEXT NOT NULL UNIQUE,
    device      TEXT NOT NULL,
    user_id     INTEGER NOT NULL REFERENCES users(id),
    kind        TEXT NOT NULL CHECK (kind IN ('copy', 'scan', 'fax')),
    pages       INTEGER NOT NULL,
    colour      INTEGER NOT NULL,
    sides       TEXT NOT NULL,
    cost        INTEGER NOT NULL,
    body        TEXT NOT NULL,
    created_at  REAL NOT NULL
);
