-- Enrollments written before the thumbprint index (schema 2) existed: their
-- certificates join the index, so revocation by thumbprint finds them.
INSERT OR IGNORE INTO enrollment_thumbprints (service, thumbprint, id_key)
SELECT service, upper(t), id_key FROM (
    SELECT service, id_key,
        json_extract(doc, '$.attestation.x509.clientCertificates.primary.info.sha256Thumbprint') AS t
    FROM enrollments
    UNION ALL
    SELECT service, id_key,
        json_extract(doc, '$.attestation.x509.clientCertificates.secondary.info.sha256Thumbprint')
    FROM enrollments
) WHERE t IS NOT NULL;
