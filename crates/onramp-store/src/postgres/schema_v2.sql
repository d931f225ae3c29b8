-- Schema version 2: registrations running on some node, and the start of
-- the operation each registration record comes from.
--
-- One running operation per device: a poll through another node answers
-- `assigning` from it until its lease (Unix ns) ends; the registration's
-- record removes it in the same statement.
CREATE TABLE operations (
    service          TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key           TEXT COLLATE "C" NOT NULL,
    registration_id  TEXT NOT NULL,
    operation_id     TEXT NOT NULL,
    node             TEXT NOT NULL,
    started          BIGINT NOT NULL,
    lease_until      BIGINT NOT NULL,
    PRIMARY KEY (service, id_key)
);
-- When the record's operation started (Unix ns, from its ID; NULL when the
-- ID carries no time): a record is replaced only by one whose operation
-- started no earlier, so the newest registration of a device wins whichever
-- node commits last.
ALTER TABLE registrations ADD COLUMN op_started BIGINT;
