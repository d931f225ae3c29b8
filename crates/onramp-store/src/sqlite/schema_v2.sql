-- Schema version 2: CA certificates, and the thumbprint index of X.509 enrollments.
CREATE TABLE ca_certificates (
    service   TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name_key  TEXT NOT NULL,
    etag      TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (service, name_key)
) WITHOUT ROWID;
CREATE TABLE enrollment_thumbprints (
    service     TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    thumbprint  TEXT NOT NULL,
    id_key      TEXT NOT NULL,
    PRIMARY KEY (service, thumbprint, id_key)
) WITHOUT ROWID;
CREATE INDEX enrollment_thumbprints_by_id ON enrollment_thumbprints(service, id_key);
-- Deleting an enrollment (directly or with its service) drops its index rows.
CREATE TRIGGER enrollments_unindex AFTER DELETE ON enrollments BEGIN
    DELETE FROM enrollment_thumbprints WHERE service = old.service AND id_key = old.id_key;
END;
