-- Onramp PostgreSQL store, schema version 1: the SQLite store's tables
-- (schema.sql to schema_v5.sql) as one step. Keys compare byte by byte
-- (COLLATE "C"), as SQLite's do, so pages come in the same order. Secrets
-- live only in *_sealed columns (see seal.rs); docs hold the rest as JSON
-- text, which the store never looks inside.
CREATE TABLE services (
    name          TEXT COLLATE "C" PRIMARY KEY,
    id_scope_key  TEXT COLLATE "C" NOT NULL UNIQUE,
    doc           TEXT NOT NULL
);
CREATE TABLE policies (
    service      TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name         TEXT COLLATE "C" NOT NULL,
    rights       SMALLINT NOT NULL,
    keys_sealed  BYTEA NOT NULL,
    PRIMARY KEY (service, name)
);
CREATE INDEX policies_by_name ON policies(name);
CREATE TABLE linked_hubs (
    service            TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name_key           TEXT COLLATE "C" NOT NULL,
    doc                TEXT NOT NULL,
    connection_sealed  BYTEA NOT NULL,
    PRIMARY KEY (service, name_key)
);
CREATE TABLE enrollments (
    service      TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key       TEXT COLLATE "C" NOT NULL,
    etag         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    keys_sealed  BYTEA,
    PRIMARY KEY (service, id_key)
);
CREATE TABLE enrollment_groups (
    service      TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key       TEXT COLLATE "C" NOT NULL,
    etag         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    keys_sealed  BYTEA,
    PRIMARY KEY (service, id_key)
);
-- Deleting an enrollment (directly or with its service) drops its index
-- rows through the foreign key: no trigger needed.
CREATE TABLE enrollment_thumbprints (
    service     TEXT COLLATE "C" NOT NULL,
    thumbprint  TEXT COLLATE "C" NOT NULL,
    id_key      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (service, thumbprint, id_key),
    FOREIGN KEY (service, id_key) REFERENCES enrollments(service, id_key) ON DELETE CASCADE
);
CREATE INDEX enrollment_thumbprints_by_id ON enrollment_thumbprints(service, id_key);
-- The creation time is a column of its own (the document leaves it out), so
-- that an unconditional write, a registration's, is one statement.
CREATE TABLE registrations (
    service       TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key        TEXT COLLATE "C" NOT NULL,
    group_key     TEXT COLLATE "C",
    operation_id  TEXT NOT NULL,
    etag          TEXT NOT NULL,
    created       TEXT NOT NULL,
    doc           TEXT NOT NULL,
    placement     TEXT,
    hub_key       TEXT COLLATE "C",
    PRIMARY KEY (service, id_key)
);
CREATE INDEX registrations_by_group ON registrations(service, group_key, id_key);
CREATE INDEX registrations_by_hub ON registrations(service, hub_key);
CREATE TABLE ca_certificates (
    service   TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name_key  TEXT COLLATE "C" NOT NULL,
    etag      TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (service, name_key)
);
CREATE TABLE hub_latencies (
    node     TEXT COLLATE "C" NOT NULL,
    hub_key  TEXT COLLATE "C" NOT NULL,
    doc      TEXT NOT NULL,
    PRIMARY KEY (node, hub_key)
);
CREATE TABLE tpm_challenges (
    service      TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key       TEXT COLLATE "C" NOT NULL,
    etag         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    keys_sealed  BYTEA,
    PRIMARY KEY (service, id_key)
);
-- One value sealed with the master key ring of the node that opened the
-- database first: a node whose ring cannot open it has other keys, and is
-- refused at start rather than sealing secrets the others cannot read.
CREATE TABLE master_key_check (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    sealed  BYTEA NOT NULL
);
