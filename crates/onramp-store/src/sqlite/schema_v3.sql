-- Schema version 3: where each device lives (kept through failed
-- re-registrations; counted per hub), and hub round trips measured per node.
ALTER TABLE registrations ADD COLUMN placement TEXT;
ALTER TABLE registrations ADD COLUMN hub_key TEXT;
UPDATE registrations SET hub_key = lower(json_extract(doc, '$.assignedHub'))
    WHERE json_extract(doc, '$.status') = 'assigned';
CREATE INDEX registrations_by_hub ON registrations(service, hub_key);
CREATE TABLE hub_latencies (
    node     TEXT NOT NULL,
    hub_key  TEXT NOT NULL,
    doc      TEXT NOT NULL,
    PRIMARY KEY (node, hub_key)
) WITHOUT ROWID;
