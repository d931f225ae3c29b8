-- Registrations running on some node, one per device: a poll through
-- another node answers `assigning` from it until the lease (Unix ns) ends.
-- The registration's record removes it in the same commit.
CREATE TABLE operations (
    service       TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key        TEXT NOT NULL,
    operation_id  TEXT NOT NULL,
    node          TEXT NOT NULL,
    started       INTEGER NOT NULL,
    lease_until   INTEGER NOT NULL,
    registration_id TEXT NOT NULL,
    PRIMARY KEY (service, id_key)
) WITHOUT ROWID;
