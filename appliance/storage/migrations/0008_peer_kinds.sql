-- Outpost schema, version 8: the certificate kind each sync peer was seen with
-- (docs/providers.md, "Identities").
--
-- The primary records (name, kind) the first time a name pushes or sends a heartbeat with
-- a certificate of that kind (its SAN URI outpost://<kind>/<name>). A name may have two
-- rows: a provider promoted to a site keeps its provider row and gains a site row. A
-- relay event is applied only for an origin that has a `provider` row; one whose origin
-- is not known yet is held in sync_quarantine (reason 'held: ...') and applied when that
-- origin first connects with a provider certificate.
CREATE TABLE peer_kinds (
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    first_seen  REAL NOT NULL,
    PRIMARY KEY (name, kind)
);
