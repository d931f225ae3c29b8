-- Onramp embedded store, schema version 1.
-- Secrets live only in *_sealed columns (see seal.rs); docs hold the rest as JSON.
CREATE TABLE services (
    name          TEXT PRIMARY KEY,
    id_scope_key  TEXT NOT NULL UNIQUE,
    doc           TEXT NOT NULL
);
CREATE TABLE policies (
    service        TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    rights         INTEGER NOT NULL,
    keys_sealed    BLOB NOT NULL,
    PRIMARY KEY (service, name)
) WITHOUT ROWID;
CREATE INDEX policies_by_name ON policies(name);
CREATE TABLE linked_hubs (
    service           TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name_key          TEXT NOT NULL,
    doc               TEXT NOT NULL,
    connection_sealed BLOB NOT NULL,
    PRIMARY KEY (service, name_key)
) WITHOUT ROWID;
CREATE TABLE enrollments (
    service      TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key       TEXT NOT NULL,
    etag         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    keys_sealed  BLOB,
    PRIMARY KEY (service, id_key)
) WITHOUT ROWID;
CREATE TABLE enrollment_groups (
    service      TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key       TEXT NOT NULL,
    etag         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    keys_sealed  BLOB,
    PRIMARY KEY (service, id_key)
) WITHOUT ROWID;
CREATE TABLE registrations (
    service       TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key        TEXT NOT NULL,
    group_key     TEXT,
    operation_id  TEXT NOT NULL,
    etag          TEXT NOT NULL,
    doc           TEXT NOT NULL,
    PRIMARY KEY (service, id_key)
) WITHOUT ROWID;
CREATE INDEX registrations_by_group ON registrations(service, group_key, id_key);
