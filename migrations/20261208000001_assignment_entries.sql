-- Each distinct (wire assignment, reason) of a deployment, stored once; its rows name it.
-- A rollout's rows share a handful of entries, and the ~700 B of JSON and ~200 B of reason
-- carried by every row were most of what a reconcile pass read and wrote per device.
CREATE TABLE assignment_entries (
    namespace       TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    -- sha256 (hex) of assignment_json, a newline and reason; "legacy:<device>" for the
    -- entries of rows written before this table existed
    entry_key       TEXT   NOT NULL,
    -- the wire Assignment sent to the device (artifact, runtime, self-test)
    assignment_json TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    -- when a write last named it: entries no row names are dropped a grace period later
    written_ms      BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, entry_key)
);

INSERT INTO assignment_entries (namespace, name, entry_key, assignment_json, reason, written_ms)
SELECT namespace, name, 'legacy:' || MIN(device_id), assignment_json, reason, MAX(updated_ms)
FROM assignments
GROUP BY namespace, name, assignment_json, reason;

ALTER TABLE assignments ADD COLUMN entry_key TEXT NOT NULL DEFAULT '';

UPDATE assignments SET entry_key = (
    SELECT e.entry_key FROM assignment_entries e
    WHERE e.namespace = assignments.namespace AND e.name = assignments.name
      AND e.assignment_json = assignments.assignment_json AND e.reason = assignments.reason
);

ALTER TABLE assignments DROP COLUMN assignment_json;
ALTER TABLE assignments DROP COLUMN reason;

-- finding whether any row still names an entry. On entry_key alone: an index led by
-- (namespace, name) like the primary key's was taken by PostgreSQL's planner for the state
-- reports' UPDATE ... FROM (VALUES ...), scanning a deployment's rows per report.
CREATE INDEX assignments_by_entry ON assignments (entry_key);
