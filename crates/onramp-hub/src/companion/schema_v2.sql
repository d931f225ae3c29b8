-- Companion hub store, schema version 2: telemetry and trusted CA certificates.
CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_key  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    received    TEXT NOT NULL,
    properties  TEXT NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX messages_by_device ON messages(device_key, seq);
CREATE TABLE hub_certificates (
    name   TEXT PRIMARY KEY,
    der    BLOB NOT NULL,
    added  TEXT NOT NULL
) WITHOUT ROWID;
