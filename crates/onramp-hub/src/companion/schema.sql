-- Companion hub store, schema version 1. Keys live only in *_sealed columns.
CREATE TABLE hub_policies (
    name         TEXT PRIMARY KEY,
    rights       INTEGER NOT NULL,
    keys_sealed  BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE devices (
    id_key        TEXT PRIMARY KEY,
    device        TEXT NOT NULL,
    keys_sealed   BLOB,
    twin          TEXT NOT NULL
) WITHOUT ROWID;
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
