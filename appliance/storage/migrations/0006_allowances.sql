-- Outpost schema, version 6: bounded offline spending (docs/offline-allowance.md).

-- ---------------------------------------------------------------- primary side

-- One row per grant the primary made to a site for an account: the reservation. It
-- counts against the account while released_at IS NULL and expires_at is in the future.
-- A site's next allowance request releases its reservations and records what it
-- reported spending under them (spent, over).
CREATE TABLE offline_reservations (
    grant_id     TEXT PRIMARY KEY,            -- '<site>/<n>'
    site         TEXT NOT NULL,
    account      TEXT NOT NULL,               -- account name (natural key)
    amount       INTEGER NOT NULL CHECK (amount >= 0),
    granted_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    released_at  REAL,
    spent        INTEGER,                     -- as the site reported it (minor units)
    over         INTEGER,                     -- the part beyond the grant
    charges      INTEGER
);
CREATE INDEX offline_reservations_account ON offline_reservations(account, released_at);
CREATE INDEX offline_reservations_site ON offline_reservations(site, released_at);

-- ---------------------------------------------------------------- site side

-- The grants a site holds. 'active' grants authorise offline; 'superseded' ones were
-- replaced (or are being replaced by a request in flight) and wait until their usage
-- has been reported to the primary.
CREATE TABLE offline_grants (
    grant_id     TEXT PRIMARY KEY,
    account      TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    expires_at   REAL NOT NULL,               -- by the site's clock
    received_at  REAL NOT NULL,
    -- What other sites had reserved for the account when this grant was made: online,
    -- the site lets the user spend balance + overdraft limit minus this.
    elsewhere    INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'superseded'))
);
CREATE INDEX offline_grants_account ON offline_grants(account, state);

-- Every charge the site wrote under a grant, in the ledger row's transaction: offline
-- ones (grant NULL: none; `over`: how much went past the grant), and online ones under
-- an active grant, which use the grant up too (money spent online is not there to be
-- spent again offline).
CREATE TABLE offline_charges (
    entry_id     TEXT PRIMARY KEY,
    grant_id     TEXT,
    account      TEXT NOT NULL,
    amount       INTEGER NOT NULL,            -- positive: what was charged
    over         INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    offline      INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX offline_charges_grant ON offline_charges(grant_id);
