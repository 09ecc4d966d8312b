-- Telemetry counted by any replica, shared through the fleet store.
--
-- Which of each device's numbered windows were counted (edgefleet_core::replay): the highest
-- number and a mask of the 64 below it. Every replica claims a window here, in the same
-- transaction that adds it to its roll-ups, so a window delivered twice or to two replicas
-- counts once.
CREATE TABLE telemetry_seqs (
    device_id    TEXT   NOT NULL PRIMARY KEY,
    highest_seq  BIGINT NOT NULL,
    seen_below   BIGINT NOT NULL
);

-- cohort_rollups was never written. It now holds one row per cohort, interval and writer (one
-- replica's run): a writer only ever rewrites its own rows, so replicas never wait on each
-- other here, and canary analysis merges every writer's rows.
DROP TABLE cohort_rollups;
CREATE TABLE cohort_rollups (
    namespace          TEXT   NOT NULL,
    name               TEXT   NOT NULL,
    variant            TEXT   NOT NULL,
    device_class       TEXT   NOT NULL,
    role               TEXT   NOT NULL,
    interval_start_ms  BIGINT NOT NULL,
    writer             TEXT   NOT NULL,
    window_json        TEXT   NOT NULL,
    PRIMARY KEY (namespace, name, variant, device_class, role, interval_start_ms, writer)
);
CREATE INDEX cohort_rollups_by_interval ON cohort_rollups (interval_start_ms);
