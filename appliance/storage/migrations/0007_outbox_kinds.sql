-- Outpost schema, version 7: what else a site pushes (docs/wire/sync.md, "Event kinds").
--
-- Migration 0003 pushed ledger rows only. Here the same mechanism (a trigger appends the
-- outbox event inside the statement that made the change) covers a site's job log, its
-- page-counter checks, the cards linked at its panels and the users it creates, and the
-- primary gets the tables those land in. The primary's user changes gain `directory_id`.
--
-- Rows a site applies from the primary's stream (users, cards of other sites) must not be
-- pushed back: `apply_changes_sync` holds sync_state 'replicating' for the duration of its
-- transaction, and the user and card triggers are silent while it is there.
--
-- Event ids are made here, at the site, once: deterministic where the change happens once
-- (`job:<uuid>:created`, `counter:<job uuid>:<attempt>`), with a random suffix where it may
-- happen again (a job held twice, a card unlinked by the primary and linked again). The
-- outbox keeps the id; a resend carries the same one, which is all idempotency needs.

-- ---------------------------------------------------------------- primary side

-- The job log of every site: one row per job event a site pushed.
CREATE TABLE site_job_log (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,          -- '<site>/job:<uuid>:<event>[:<suffix>]'
    site            TEXT NOT NULL,
    job_uuid        TEXT NOT NULL,
    event           TEXT NOT NULL,                 -- created, released, completed, held, ...
    state           TEXT NOT NULL,                 -- the job's state after the event
    queue           TEXT NOT NULL,
    owner           TEXT NOT NULL,
    pages           INTEGER,
    copies          INTEGER NOT NULL,
    colour          INTEGER NOT NULL,
    sides           TEXT NOT NULL,
    device          TEXT,
    attempt         INTEGER NOT NULL,
    impressions     INTEGER NOT NULL,
    charged         INTEGER NOT NULL,              -- minor units charged for the job so far
    job_created_at  REAL NOT NULL,
    at              REAL NOT NULL                  -- when the event happened (site clock)
);
CREATE INDEX site_job_log_job ON site_job_log(site, job_uuid, id);
CREATE INDEX site_job_log_owner ON site_job_log(owner, at);

-- Every site's page-counter checks (a site's device_counter_checks, keyed by job uuid).
CREATE TABLE site_counter_checks (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,          -- '<site>/counter:<job uuid>:<attempt>'
    site            TEXT NOT NULL,
    job_uuid        TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    device          TEXT NOT NULL,
    counter_before  INTEGER,
    counter_after   INTEGER,
    counter_delta   INTEGER,
    impressions     INTEGER NOT NULL,
    difference      INTEGER,
    status          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    started_at      REAL NOT NULL,
    finished_at     REAL NOT NULL
);
CREATE INDEX site_counter_checks_device ON site_counter_checks(site, device, finished_at);

-- ---------------------------------------------------------------- site side: outbox triggers

-- A job is 'created' when it has its document (the job acknowledged to the client): a
-- Print-Job inserts it with one, a Create-Job gets it with Send-Document.
CREATE TRIGGER jobs_outbox_created AFTER INSERT ON jobs
WHEN NEW.spool_name IS NOT NULL AND (SELECT value FROM sync_state WHERE key = 'role') = 'site'
BEGIN
    INSERT INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/job:' || NEW.uuid || ':created',
        'job',
        json_object(
            'job_uuid', NEW.uuid, 'event', 'created', 'state', NEW.state,
            'queue', NEW.queue, 'owner', NEW.owner, 'pages', NEW.pages,
            'copies', NEW.copies, 'colour', NEW.colour, 'sides', NEW.sides,
            'device', NEW.device, 'attempt', NEW.attempts,
            'impressions', NEW.impressions_completed, 'charged', NEW.charged,
            'created_at', NEW.created_at, 'at', NEW.created_at),
        NEW.created_at);
END;

CREATE TRIGGER jobs_outbox_document AFTER UPDATE OF spool_name ON jobs
WHEN OLD.spool_name IS NULL AND NEW.spool_name IS NOT NULL AND OLD.attempts = 0
     AND OLD.state = 'held' AND (SELECT value FROM sync_state WHERE key = 'role') = 'site'
BEGIN
    INSERT OR IGNORE INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/job:' || NEW.uuid || ':created',
        'job',
        json_object(
            'job_uuid', NEW.uuid, 'event', 'created', 'state', NEW.state,
            'queue', NEW.queue, 'owner', NEW.owner, 'pages', NEW.pages,
            'copies', NEW.copies, 'colour', NEW.colour, 'sides', NEW.sides,
            'device', NEW.device, 'attempt', NEW.attempts,
            'impressions', NEW.impressions_completed, 'charged', NEW.charged,
            'created_at', NEW.created_at,
            'at', (julianday('now') - 2440587.5) * 86400.0),
        (julianday('now') - 2440587.5) * 86400.0);
END;

-- Every later change of state: processing is 'released', canceled 'cancelled', the others
-- keep their state's name (held, pending, completed, aborted, expired). `device` is where
-- the job was sent, also when it comes back to the hold (the row then forgets it).
CREATE TRIGGER jobs_outbox_state AFTER UPDATE OF state ON jobs
WHEN OLD.state IS NOT NEW.state
     AND NOT (OLD.spool_name IS NULL AND NEW.spool_name IS NOT NULL)
     AND (SELECT value FROM sync_state WHERE key = 'role') = 'site'
BEGIN
    INSERT INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/job:' || NEW.uuid || ':'
            || CASE NEW.state WHEN 'processing' THEN 'released'
                              WHEN 'canceled' THEN 'cancelled' ELSE NEW.state END
            || ':' || lower(hex(randomblob(6))),
        'job',
        json_object(
            'job_uuid', NEW.uuid,
            'event', CASE NEW.state WHEN 'processing' THEN 'released'
                                    WHEN 'canceled' THEN 'cancelled' ELSE NEW.state END,
            'state', NEW.state,
            'queue', NEW.queue, 'owner', NEW.owner, 'pages', NEW.pages,
            'copies', NEW.copies, 'colour', NEW.colour, 'sides', NEW.sides,
            'device', COALESCE(NEW.device, OLD.device), 'attempt', NEW.attempts,
            'impressions', NEW.impressions_completed, 'charged', NEW.charged,
            'created_at', NEW.created_at,
            'at', (julianday('now') - 2440587.5) * 86400.0),
        (julianday('now') - 2440587.5) * 86400.0);
END;

CREATE TRIGGER counter_checks_outbox AFTER INSERT ON device_counter_checks
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'site'
BEGIN
    INSERT INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/counter:'
            || (SELECT uuid FROM jobs WHERE id = NEW.job_id) || ':' || NEW.attempt,
        'counter_check',
        json_object(
            'job_uuid', (SELECT uuid FROM jobs WHERE id = NEW.job_id),
            'attempt', NEW.attempt, 'device', NEW.device,
            'counter_before', NEW.counter_before, 'counter_after', NEW.counter_after,
            'counter_delta', NEW.counter_delta, 'impressions', NEW.impressions,
            'difference', NEW.difference, 'status', NEW.status, 'detail', NEW.detail,
            'started_at', NEW.started_at, 'finished_at', NEW.finished_at),
        NEW.finished_at);
END;

-- A card linked at a site (panel POST /cards, or `outpost users import`): its HMAC only.
CREATE TRIGGER identities_outbox_card AFTER INSERT ON identities
WHEN NEW.kind = 'card'
     AND (SELECT value FROM sync_state WHERE key = 'role') = 'site'
     AND (SELECT value FROM sync_state WHERE key = 'replicating') IS NULL
BEGIN
    INSERT INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/card:' || NEW.lookup || ':'
            || lower(hex(randomblob(6))),
        'card',
        json_object(
            'username', (SELECT username FROM users WHERE id = NEW.user_id),
            'lookup', NEW.lookup, 'linked_at', NEW.created_at),
        NEW.created_at);
END;

-- A user created at a site (`outpost users import`).
CREATE TRIGGER users_outbox_insert AFTER INSERT ON users
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'site'
     AND (SELECT value FROM sync_state WHERE key = 'replicating') IS NULL
BEGIN
    INSERT INTO outbox (event_id, kind, body, created_at) VALUES (
        (SELECT value FROM sync_state WHERE key = 'name') || '/user:' || NEW.username || ':'
            || lower(hex(randomblob(6))),
        'user',
        json_object(
            'username', NEW.username, 'full_name', NEW.full_name, 'email', NEW.email,
            'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
            'directory_id', NEW.directory_id, 'disabled', NEW.disabled,
            'created_at', NEW.created_at),
        NEW.created_at);
END;

-- ---------------------------------------------------------------- primary: users' directory id

DROP TRIGGER users_changes_insert;
CREATE TRIGGER users_changes_insert AFTER INSERT ON users
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('user', NEW.username, json_object(
        'username', NEW.username, 'full_name', NEW.full_name, 'email', NEW.email,
        'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
        'disabled', NEW.disabled, 'directory_id', NEW.directory_id));
END;

DROP TRIGGER users_changes_update;
CREATE TRIGGER users_changes_update AFTER UPDATE ON users
WHEN (SELECT value FROM sync_state WHERE key = 'role') = 'primary'
     AND (OLD.username IS NOT NEW.username OR OLD.full_name IS NOT NEW.full_name
          OR OLD.email IS NOT NEW.email OR OLD.account_id IS NOT NEW.account_id
          OR OLD.disabled IS NOT NEW.disabled OR OLD.directory_id IS NOT NEW.directory_id)
BEGIN
    INSERT INTO changes (kind, key, body) VALUES ('user', NEW.username, json_object(
        'username', NEW.username, 'full_name', NEW.full_name, 'email', NEW.email,
        'account', (SELECT name FROM accounts WHERE id = NEW.account_id),
        'disabled', NEW.disabled, 'directory_id', NEW.directory_id));
END;
