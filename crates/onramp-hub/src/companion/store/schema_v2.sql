-- Companion hub store, schema version 2: telemetry and trusted CA certificates.
-- Some version-1 stores already have these tables (they were part of schema 1
-- for a while), hence IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_key  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    received    TEXT NOT NULL,
    properties  TEXT NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_device ON messages(device_key, seq);
CREATE TABLE IF NOT EXISTS hub_certificates (
    name   TEXT PRIMARY KEY,
    der    BLOB NOT NULL,
    added  TEXT NOT NULL
) WITHOUT ROWID;
