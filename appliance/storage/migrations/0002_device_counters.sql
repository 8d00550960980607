-- Outpost schema, version 2: page-counter checks around releases (SNMP prtMarkerLifeCount).
-- One row per print attempt whose device counter the site tried to read before and after.
-- status: 'ok' (delta = impressions charged), 'discrepancy' (they differ, no other job ran),
-- 'overlapped' (another job printed on the device meanwhile), 'unmeasured' (no counter).

CREATE TABLE device_counter_checks (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs(id),
    attempt         INTEGER NOT NULL,
    device          TEXT NOT NULL,
    counter_before  INTEGER,
    counter_after   INTEGER,
    counter_delta   INTEGER,
    impressions     INTEGER NOT NULL,
    difference      INTEGER,
    status          TEXT NOT NULL
                    CHECK (status IN ('ok', 'discrepancy', 'overlapped', 'unmeasured')),
    detail          TEXT NOT NULL DEFAULT '',
    started_at      REAL NOT NULL,
    finished_at     REAL NOT NULL,
    UNIQUE (job_id, attempt)
);

CREATE INDEX device_counter_checks_by_device ON device_counter_checks (device, finished_at);
CREATE INDEX device_counter_checks_by_status ON device_counter_checks (status)
    WHERE status = 'discrepancy';
