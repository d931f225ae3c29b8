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
