-- Schema version 3: diagnostic entries, one per registration attempt
-- (assigned, failed or refused): the entry's JSON, with what queries and
-- pruning select on beside it (`time` in Unix ns). Read newest first, by
-- service and optionally by device; pruned by age and by count per service.
CREATE TABLE diagnostics (
    id       BIGSERIAL PRIMARY KEY,
    service  TEXT COLLATE "C" NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    id_key   TEXT COLLATE "C" NOT NULL,
    time     BIGINT NOT NULL,
    outcome  TEXT NOT NULL,
    doc      TEXT NOT NULL
);
CREATE INDEX diagnostics_by_time ON diagnostics (service, time);
CREATE INDEX diagnostics_by_device ON diagnostics (service, id_key, time);
