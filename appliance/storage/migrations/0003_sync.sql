-- Outpost schema, version 3: replication between sites and the primary (docs/wire/sync.md).
--
-- Every database has every table; `sync_state.role` says which side it plays. The
-- triggers below are how "written in the same transaction" is kept: a ledger row at a
-- site appends its outbox event, and at the primary every master-data change and every
-- ledger row appends to the change log, inside the statement that made the change, so
-- no code path can forget it. With no role declared (a bare database) they do nothing.

-- Where a ledger row was made: NULL here; otherwise the site (or primary) it came from.
-- Rows that came from elsewhere are never pushed again.
ALTER TABLE ledger ADD COLUMN origin TEXT;

-- role ('site' | 'primary'), name, pull_token, push_checkpoint, mode, ...
CREATE TABLE sync_state (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);

-- ---------------------------------------------------------------- site side

-- Events waiting for the primary's acknowledgement, in commit order. A row is deleted
-- only after the primary answered with a checkpoint >= its seq.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,      -- '<site name>/<entry id>'
    kind        TEXT NOT NULL,             -- 'ledger' (more kinds come with their features)
    body        TEXT NOT NULL,             -- JSON
    created_at  REAL NOT NULL
);

-- The latest body of every master-data row pulled from the primary (users, identities,
-- accounts, devices, cost policies), as the primary sent it. Users, identities and
-- accounts are also applied to the live tables; devices and cost policies stay here
-- until device ownership per site is modelled (the site's own configuration rules them).
CREATE TABLE replica (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    body    TEXT NOT NULL,
    token   INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);

-- ---------------------------------------------------------------- primary side

-- Every event ever applied, by its site-made id: the idempotency record.
CREATE TABLE sync_events (
    event_id     TEXT PRIMARY KEY,
    site         TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    body         TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    applied_at   REAL NOT NULL
);
CREATE INDEX sync_events_site ON sync_events(site, seq);

-- Events that were not applied: same id with another body, or a body that cannot apply.
CREATE TABLE sync_quarantine (
    id           INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL,
    site         TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    received_at  REAL NOT NULL,
    UNIQUE (event_id, body_sha256)
);

CREATE TABLE sync_sites (
    name            TEXT PRIMARY KEY,
    checkpoint      INTEGER NOT NULL DEFAULT 0,   -- highest outbox seq processed
    last_seen       REAL,
    mode            TEXT,                          -- as the site last reported it
    outbox          INTEGER,                       -- events waiting, as last reported
    pull_token      TEXT,
    events_applied  INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    quarantined     INTEGER NOT NULL DEFAULT 0
);

-- One row per outage a site reported (its offline period, by its clock); the counters
-- grow with each batch until the site reports an empty outbox (merged_at).
CREATE TABLE outage_reports (
    id              INTEGER PRIMARY KEY,
    site            TEXT NOT NULL,
    started_at      REAL NOT NULL,
    ended_at        REAL NOT NULL,
    reported_at     REAL NOT NULL,
    merged_at       REAL,
    events_merged   INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    quarantined     INTEGER NOT NULL DEFAULT 0,
    overspend       INTEGER NOT NULL DEFAULT 0,    -- filled in by the offline-allowance work
    UNIQUE (site, started_at)
);

-- The pull stream: one row per master-data change and per ledger row, in commit order.
-- `seq` is the stream token. Bodies hold HMACs and Argon2id verifiers, never secrets.
CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL,   -- account, user, identity, device, cost_policy, ledger
    key     TEXT NOT NULL,
    body    TEXT NOT NULL
);

-- ---------------------------------------------------------------- triggers: site outbox

CREATE TRIGGER ledger_outbox AFTER INSERT ON ledger
WHEN NEW.origin IS NULL AND (SELECT value FROM sync_state WHERE key = 'role') = 'site'
BEGIN
    INSERT INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/' || NEW.entry_id,
        'ledger',
        json_object(
            'entry_id', NEW.entry_id,
            'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
            'account_kind', (SELECT kind FROM accounts WHERE id = NEW.account_id),
            'amount', NEW.amount,
            'kind', NEW.kind,
            'source', NEW.source,
            'job_uuid', (SELECT uuid FROM jobs WHERE id = NEW.job_id),
            'device', NEW.device,
            'impressions', NEW.impressions,
            'colour', NEW.colour,
            'body', json(NEW.body),
            'created_at', NEW.created_at),
        NEW.created_at);
END;

-- ---------------------------------------------------------------- triggers: primary change log
-- The JSON shapes here are the wire's (docs/wire/sync.md, "Change bodies"); the snapshot
-- (appliance/storage/sync_store.py) builds the same shapes from the tables.

CREATE TRIGGER ledger_changes AFTER INSERT ON ledger
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES (
        'ledger',
        CASE WHEN NEW.origin IS NULL
             THEN (SELECT value FROM sync_state WHERE key = 'name') || '/' || NEW.entry_id
             ELSE NEW.entry_id END,
        json_object(
            'id', CASE WHEN NEW.origin IS NULL
                       THEN (SELECT value FROM sync_state WHERE key = 'name') || '/' || NEW.entry_id
                       ELSE NEW.entry_id END,
            'origin', COALESCE(NEW.origin, (SELECT value FROM sync_state WHERE key = 'name')),
            'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
            'account_kind', (SELECT kind FROM accounts WHERE id = NEW.account_id),
            'amount', NEW.amount,
            'kind', NEW.kind,
            'source', NEW.source,
            'device', NEW.device,
            'impressions', NEW.impressions,
            'colour', NEW.colour,
            'body', json(NEW.body),
            'created_at', NEW.created_at));
END;

CREATE TRIGGER accounts_changes_insert AFTER INSERT ON accounts
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('account', NEW.name, json_object(
        'name', NEW.name, 'kind', NEW.kind, 'overdraft_limit', NEW.overdraft_limit));
END;

CREATE TRIGGER accounts_changes_update AFTER UPDATE ON accounts
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
     AND (OLD.name IS NOT NEW.name OR OLD.kind IS NOT NEW.kind
          OR OLD.overdraft_limit IS NOT NEW.overdraft_limit)
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('account', NEW.name, json_object(
        'name', NEW.name, 'kind', NEW.kind, 'overdraft_limit', NEW.overdraft_limit));
END;

CREATE TRIGGER users_changes_insert AFTER INSERT ON users
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('user', NEW.username, json_object(
        'username', NEW.username, 'full_name', NEW.full_name, 'email', NEW.email,
        'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
        'disabled', NEW.disabled));
END;

CREATE TRIGGER users_changes_update AFTER UPDATE ON users
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
     AND (OLD.username IS NOT NEW.username OR OLD.full_name IS NOT NEW.full_name
          OR OLD.email IS NOT NEW.email OR OLD.account_id IS NOT NEW.account_id
          OR OLD.disabled IS NOT NEW.disabled)
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('user', NEW.username, json_object(
        'username', NEW.username, 'full_name', NEW.full_name, 'email', NEW.email,
        'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
        'disabled', NEW.disabled));
END;

CREATE TRIGGER identities_changes_insert AFTER INSERT ON identities
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES (
        'identity',
        (SELECT username FROM users WHERE id = NEW.user_id) || ':' || NEW.kind
            || CASE WHEN NEW.kind = 'card' THEN ':' || NEW.lookup ELSE '' END,
        json_object(
            'username', (SELECT username FROM users WHERE id = NEW.user_id),
            'kind', NEW.kind, 'lookup', NEW.lookup, 'verifier', NEW.verifier,
            'deleted', json('false')));
END;

CREATE TRIGGER identities_changes_delete AFTER DELETE ON identities
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES (
        'identity',
        (SELECT username FROM users WHERE id = OLD.user_id) || ':' || OLD.kind
            || CASE WHEN OLD.kind = 'card' THEN ':' || OLD.lookup ELSE '' END,
        json_object(
            'username', (SELECT username FROM users WHERE id = OLD.user_id),
            'kind', OLD.kind, 'lookup', OLD.lookup, 'verifier', OLD.verifier,
            'deleted', json('true')));
END;

CREATE TRIGGER devices_changes_insert AFTER INSERT ON devices
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('device', NEW.name, json_object(
        'name', NEW.name, 'kind', NEW.kind, 'protocol', NEW.protocol, 'uri', NEW.uri,
        'colour', NEW.colour, 'duplex', NEW.duplex, 'cost_policy', NEW.cost_policy,
        'enabled', NEW.enabled));
END;

CREATE TRIGGER devices_changes_update AFTER UPDATE ON devices
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
     AND (OLD.name IS NOT NEW.name OR OLD.kind IS NOT NEW.kind OR OLD.protocol IS NOT NEW.protocol
          OR OLD.uri IS NOT NEW.uri OR OLD.colour IS NOT NEW.colour
          OR OLD.duplex IS NOT NEW.duplex OR OLD.cost_policy IS NOT NEW.cost_policy
          OR OLD.enabled IS NOT NEW.enabled)
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('device', NEW.name, json_object(
        'name', NEW.name, 'kind', NEW.kind, 'protocol', NEW.protocol, 'uri', NEW.uri,
        'colour', NEW.colour, 'duplex', NEW.duplex, 'cost_policy', NEW.cost_policy,
        'enabled', NEW.enabled));
END;

CREATE TRIGGER cost_policies_changes_insert AFTER INSERT ON cost_policies
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('cost_policy', NEW.name, json_object(
        'name', NEW.name, 'policy', json(NEW.body)));
END;

CREATE TRIGGER cost_policies_changes_update AFTER UPDATE ON cost_policies
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
     AND (OLD.name IS NOT NEW.name OR OLD.body IS NOT NEW.body)
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('cost_policy', NEW.name, json_object(
        'name', NEW.name, 'policy', json(NEW.body)));
END;
