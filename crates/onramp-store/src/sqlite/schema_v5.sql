-- TPM challenges sent and not yet outlived, one per registration ID: the
-- document (keys of the device, expiry, the operation that spent it) and,
-- sealed apart, the HMAC key the activation blob carried.
CREATE TABLE tpm_challenges (
    service      TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key       TEXT NOT NULL,
    etag         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    keys_sealed  BLOB,
    PRIMARY KEY (service, id_key)
) WITHOUT ROWID;
